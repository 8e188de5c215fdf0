//! Service-account tokens as the CA's credentials on Kubernetes: a pod presents its projected
//! token (audience `istio-ca`), and the API server says whose it is (TokenReview), as istiod
//! authenticates its callers.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// The audience a pod's token must be minted for to get a certificate (Istio's).
pub const AUDIENCE: &str = "istio-ca";

/// Asks the API server who a token belongs to.
#[derive(Clone)]
pub struct ServiceAccountTokens {
    reviews: Api<TokenReview>,
}

impl std::fmt::Debug for ServiceAccountTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceAccountTokens(..)")
    }
}

impl ServiceAccountTokens {
    /// Reviews tokens with `client`'s API server.
    pub fn new(client: kube::Client) -> Self {
        Self {
            reviews: Api::all(client),
        }
    }

    /// The namespace and service account of a valid token minted for [`AUDIENCE`]; `None`
    /// for any other token (expired, for another audience, of a deleted pod or account, not
    /// a service account's). An error when the API server cannot say.
    pub async fn verify(&self, token: &str) -> Result<Option<(String, String)>, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let reviewed = self.reviews.create(&PostParams::default(), &review).await?;
        let Some(status) = reviewed.status else {
            return Ok(None);
        };
        if status.authenticated != Some(true)
            || !status
                .audiences
                .as_ref()
                .is_some_and(|audiences| audiences.iter().any(|a| a == AUDIENCE))
        {
            return Ok(None);
        }
        let username = status
            .user
            .and_then(|user| user.username)
            .unwrap_or_default();
        Ok(service_account_of(&username))
    }
}

/// `system:serviceaccount:<namespace>:<name>` → (namespace, name).
fn service_account_of(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    if namespace.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    Some((namespace.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::service_account_of;

    #[test]
    fn only_a_service_account_user_is_an_identity() {
        assert_eq!(
            service_account_of("system:serviceaccount:default:bookinfo-reviews"),
            Some(("default".to_string(), "bookinfo-reviews".to_string()))
        );
        assert_eq!(service_account_of("admin"), None);
        assert_eq!(service_account_of("system:serviceaccount:default"), None);
        assert_eq!(service_account_of("system:serviceaccount::x"), None);
        assert_eq!(service_account_of("system:node:node-1"), None);
    }
}
