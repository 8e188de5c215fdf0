//! Istio's MeshConfig: the mesh-wide settings istiod reads from the `mesh` key of the
//! `istio` ConfigMap (a file, `--meshConfig`). Weft reads the fields it acts on; the others
//! are listed back to the caller, who says they are ignored, so a pasted Istio mesh config
//! never silently means less than it says.

use serde::Deserialize;

use crate::load::Limits;

/// The mesh-wide settings Weft acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// How request paths are normalized before authorization and routing.
    #[serde(default)]
    pub path_normalization: Option<PathNormalizationConfig>,
    /// Defaults for every proxy.
    #[serde(default)]
    pub default_config: Option<ProxyConfig>,
    /// External services policies may delegate to (`action: CUSTOM`).
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
}

/// `pathNormalization`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathNormalizationConfig {
    /// The normalization applied.
    #[serde(default)]
    pub normalization: Option<PathNormalization>,
}

/// Istio's path normalizations, each a superset of the one before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// Istio's default: `BASE`.
    #[default]
    Default,
    /// Paths as sent.
    None,
    /// RFC 3986 normalization: dot segments resolved, unreserved characters decoded,
    /// backslashes made slashes.
    Base,
    /// `BASE`, and runs of slashes merged.
    MergeSlashes,
    /// `MERGE_SLASHES`, and escaped slashes (`%2F`, `%5C`) decoded first.
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    /// What `Default` means.
    pub fn effective(self) -> Self {
        match self {
            Self::Default => Self::Base,
            other => other,
        }
    }
}

/// `defaultConfig` (ProxyConfig).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Where gateways sit behind other proxies.
    #[serde(default)]
    pub gateway_topology: Option<GatewayTopology>,
}

/// `gatewayTopology`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTopology {
    /// How many proxies in front of the gateway append to `x-forwarded-for`.
    #[serde(default)]
    pub num_trusted_proxies: u32,
}

/// One `extensionProviders` entry; only its name is read (Weft has no external authorizer
/// integration yet, so CUSTOM policies deny whatever provider they name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ExtensionProvider {
    /// The name policies refer to.
    #[serde(default)]
    pub name: String,
}

impl MeshConfig {
    /// Parses a mesh config file (YAML or JSON); also returns the fields Weft ignores.
    pub fn parse(text: &str) -> Result<(Self, Vec<String>), String> {
        let documents = crate::load::documents(text, &Limits::default())?;
        let value = match documents.as_slice() {
            [] => return Ok((Self::default(), Vec::new())),
            [one] => one.clone(),
            _ => return Err("a mesh config is one document".to_string()),
        };
        let mut ignored = Vec::new();
        // Optional fields show as `?` in the path; the user wrote none.
        let config = serde_ignored::deserialize(value, |path| {
            ignored.push(path.to_string().replace(".?", ""))
        })
        .map_err(|e| e.to_string())?;
        Ok((config, ignored))
    }

    /// The path normalization in force.
    pub fn path_normalization(&self) -> PathNormalization {
        self.path_normalization
            .as_ref()
            .and_then(|p| p.normalization)
            .unwrap_or_default()
            .effective()
    }

    /// `numTrustedProxies` of the default proxy config.
    pub fn num_trusted_proxies(&self) -> u32 {
        self.default_config
            .as_ref()
            .and_then(|c| c.gateway_topology.as_ref())
            .map_or(0, |t| t.num_trusted_proxies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_weft_acts_on_and_lists_the_rest() {
        let (config, ignored) = MeshConfig::parse(
            "pathNormalization: {normalization: MERGE_SLASHES}\n\
             accessLogFile: /dev/stdout\n\
             defaultConfig: {gatewayTopology: {numTrustedProxies: 2}, holdApplicationUntilProxyStarts: true}\n\
             extensionProviders: [{name: opa, envoyExtAuthzGrpc: {service: opa.svc, port: 9191}}]\n",
        )
        .unwrap_or_default();
        assert_eq!(config.path_normalization(), PathNormalization::MergeSlashes);
        assert_eq!(config.num_trusted_proxies(), 2);
        assert_eq!(config.extension_providers[0].name, "opa");
        assert_eq!(
            ignored,
            [
                "accessLogFile",
                "defaultConfig.holdApplicationUntilProxyStarts",
                "extensionProviders.0.envoyExtAuthzGrpc"
            ]
        );
        assert_eq!(
            MeshConfig::default().path_normalization(),
            PathNormalization::Base
        );
        assert!(MeshConfig::parse("pathNormalization: {normalization: SOMETIMES}").is_err());
    }
}
