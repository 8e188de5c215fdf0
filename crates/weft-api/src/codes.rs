//! Every message code Weft reports, in one table.
//!
//! Codes are stable: scripts may match on them. `WEFT00xx` are loading problems, `WEFT01xx`
//! per-resource validation, `WEFT02xx` cross-resource analysis, `WEFT03xx` notes about
//! features. Where Istio's `istioctl analyze` has the same check, its `IST` code is given
//! alongside; Istio reports every schema problem as IST0106.

use crate::message::Level;

/// A kind of message.
#[derive(Debug, PartialEq, Eq)]
pub struct Code {
    /// The stable identifier, `WEFT0101`.
    pub id: &'static str,
    /// Istio's code for the same finding, if Istio has one.
    pub istio: Option<&'static str>,
    /// The level every message with this code has.
    pub level: Level,
    /// A short name.
    pub name: &'static str,
}

macro_rules! codes {
    ($($(#[$doc:meta])* $constant:ident = $id:literal, $istio:expr, $level:ident, $name:literal;)*) => {
        $( $(#[$doc])* pub static $constant: Code = Code { id: $id, istio: $istio, level: Level::$level, name: $name }; )*
        /// Every code, in order.
        pub static ALL: &[&Code] = &[$(&$constant),*];
    };
}

codes! {
    /// The YAML or JSON cannot be parsed.
    YAML_SYNTAX = "WEFT0001", None, Error, "YamlSyntaxError";
    /// A field has the wrong type or an impossible value for its type.
    SCHEMA = "WEFT0002", Some("IST0106"), Error, "SchemaValidationError";
    /// A field Weft does not know (a typo, or a field of another Istio version).
    UNKNOWN_FIELD = "WEFT0003", None, Warning, "UnknownField";
    /// A kind that is not an Istio resource Weft reads.
    UNKNOWN_KIND = "WEFT0004", None, Info, "SkippedKind";
    /// `apiVersion`, `kind` or `metadata.name` is missing.
    MISSING_TYPE = "WEFT0005", Some("IST0106"), Error, "MissingTypeOrName";
    /// The input exceeds a safety limit (size, alias expansion, nesting).
    INPUT_LIMIT = "WEFT0006", None, Error, "InputLimitExceeded";
    /// A known kind in an API version Istio never had.
    UNKNOWN_VERSION = "WEFT0007", Some("IST0106"), Error, "UnknownApiVersion";
    /// A file or directory cannot be read.
    UNREADABLE = "WEFT0008", None, Error, "UnreadableInput";
    /// A file holds no resources at all.
    EMPTY_INPUT = "WEFT0009", None, Error, "EmptyInput";
    /// An Istio kind Weft does not read (EnvoyFilter, Telemetry, …).
    UNSUPPORTED_KIND = "WEFT0010", None, Warning, "UnsupportedIstioKind";
    /// The same kind, namespace and name appears twice.
    DUPLICATE_RESOURCE = "WEFT0011", None, Warning, "DuplicateResource";

    /// A required field is missing or empty.
    REQUIRED = "WEFT0101", Some("IST0106"), Error, "RequiredFieldMissing";
    /// A host name is malformed.
    INVALID_HOST = "WEFT0102", Some("IST0106"), Error, "InvalidHost";
    /// A route weight is negative.
    NEGATIVE_WEIGHT = "WEFT0103", Some("IST0106"), Error, "NegativeWeight";
    /// Several destinations whose weights total 0.
    ZERO_TOTAL_WEIGHT = "WEFT0104", Some("IST0106"), Error, "ZeroTotalWeight";
    /// Weights that do not total 100: they are relative, so this is legal but often a slip.
    WEIGHTS_NOT_100 = "WEFT0105", None, Warning, "WeightsNotHundred";
    /// A regular expression that is not valid RE2.
    INVALID_REGEX = "WEFT0106", Some("IST0106"), Error, "InvalidRegex";
    /// A duration that is zero, negative, or finer than a millisecond where Istio forbids it.
    INVALID_DURATION = "WEFT0107", Some("IST0106"), Error, "InvalidDuration";
    /// A retry policy Istio rejects.
    INVALID_RETRIES = "WEFT0108", Some("IST0106"), Error, "InvalidRetryPolicy";
    /// An HTTP status outside what the field allows.
    INVALID_STATUS = "WEFT0109", Some("IST0106"), Error, "InvalidHttpStatus";
    /// A percentage outside 0–100.
    INVALID_PERCENT = "WEFT0110", Some("IST0106"), Error, "PercentageOutOfRange";
    /// A number outside what the field allows.
    OUT_OF_RANGE = "WEFT0111", Some("IST0106"), Error, "ValueOutOfRange";
    /// A subset without a name, or two with the same name.
    INVALID_SUBSET = "WEFT0112", Some("IST0106"), Error, "InvalidSubset";
    /// An enum value Istio does not define.
    INVALID_ENUM = "WEFT0113", Some("IST0106"), Error, "InvalidEnumValue";
    /// Fields that cannot be used together.
    CONFLICTING_FIELDS = "WEFT0114", Some("IST0106"), Error, "ConflictingFields";
    /// A port number outside 1–65535.
    INVALID_PORT = "WEFT0115", Some("IST0106"), Error, "InvalidPort";
    /// A header name Istio rejects (upper case, empty, or a pseudo-header).
    INVALID_HEADER = "WEFT0116", Some("IST0106"), Error, "InvalidHeaderName";
    /// A string match with no operator, or with more than one.
    INVALID_STRING_MATCH = "WEFT0117", Some("IST0106"), Error, "InvalidStringMatch";
    /// A label key or value Kubernetes would reject.
    INVALID_LABEL = "WEFT0118", Some("IST0106"), Error, "InvalidLabel";
    /// An authorization rule Istio rejects.
    INVALID_AUTHZ = "WEFT0119", Some("IST0106"), Error, "InvalidAuthorizationRule";
    /// An IP address or CIDR that does not parse.
    INVALID_ADDRESS = "WEFT0120", Some("IST0106"), Error, "InvalidAddress";
    /// A resource name Kubernetes would reject.
    INVALID_NAME = "WEFT0121", Some("IST0106"), Error, "InvalidResourceName";
    /// A setting that is legal but likely a mistake.
    SUSPICIOUS = "WEFT0122", None, Warning, "SuspiciousSetting";

    /// A route targets a subset that the host's DestinationRule does not define.
    UNDEFINED_SUBSET = "WEFT0201", Some("IST0101"), Error, "ReferencedSubsetNotFound";
    /// A route rule after a catch-all rule, which can never match.
    UNREACHABLE_RULE = "WEFT0202", Some("IST0130"), Warning, "VirtualServiceUnreachableRule";
    /// Two DestinationRules for one host in one namespace.
    DUPLICATE_DESTINATION_RULE = "WEFT0203", None, Warning, "MultipleDestinationRulesForHost";
    /// Two VirtualServices for one host on the sidecars.
    CONFLICTING_VIRTUAL_SERVICES = "WEFT0204", Some("IST0109"), Warning, "ConflictingMeshVirtualServiceHosts";
    /// STRICT mTLS on workloads whose clients are told by a DestinationRule not to use TLS.
    STRICT_MTLS_TLS_DISABLED = "WEFT0205", None, Error, "StrictMtlsButClientTlsDisabled";
    /// A selector that matches none of the known workloads.
    SELECTOR_MATCHES_NOTHING = "WEFT0206", Some("IST0127"), Warning, "NoMatchingWorkloadsFound";
    /// A DestinationRule subset whose labels match none of the known workloads.
    SUBSET_SELECTS_NOTHING = "WEFT0207", Some("IST0173"), Warning, "DestinationRuleSubsetNotSelectPods";
    /// A route targets a subset while no DestinationRule for the host is in the analysed set.
    SUBSET_WITHOUT_DESTINATION_RULE = "WEFT0208", None, Warning, "SubsetWithoutDestinationRule";
    /// Several selector-less Sidecars in one namespace.
    MULTIPLE_DEFAULT_SIDECARS = "WEFT0209", Some("IST0111"), Error, "MultipleSidecarsWithoutWorkloadSelectors";
    /// Several namespace-wide PeerAuthentications in one namespace.
    MULTIPLE_NAMESPACE_PEER_AUTHN = "WEFT0210", None, Warning, "MultipleNamespacePeerAuthentications";
    /// Routing on JWT claims without a RequestAuthentication in the namespace.
    JWT_CLAIM_ROUTE_WITHOUT_AUTHN = "WEFT0211", Some("IST0149"), Warning, "JwtClaimBasedRoutingWithoutRequestAuthN";

    /// A field Weft reads but does not act on yet.
    NOT_IMPLEMENTED = "WEFT0301", None, Info, "FieldNotImplemented";
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn identifiers_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for code in ALL {
            assert!(seen.insert(code.id), "{} appears twice", code.id);
            assert!(
                code.id.starts_with("WEFT") && code.id.len() == 8,
                "{}",
                code.id
            );
        }
    }
}
