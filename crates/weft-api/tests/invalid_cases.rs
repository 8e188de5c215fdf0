//! Table of invalid inputs: each case is a small file, the code and level Weft must report,
//! and the line it must point at, marked in the YAML with a `#<` comment.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

use weft_api::load::{Limits, Loader};
use weft_api::{Level, Message};

struct Case {
    name: &'static str,
    code: &'static str,
    level: Level,
    yaml: &'static str,
}

const fn case(name: &'static str, code: &'static str, level: Level, yaml: &'static str) -> Case {
    Case {
        name,
        code,
        level,
        yaml,
    }
}

use Level::{Error, Info, Warning};

const VS: &str =
    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n";
const DR: &str =
    "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n";

static CASES: &[Case] = &[
    // --- loading ---
    case(
        "tab indentation",
        "WEFT0001",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n\tname: x #<\n",
    ),
    case(
        "unclosed bracket",
        "WEFT0001",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nspec:\n  hosts: [a, b\n  http: #<\n  - route: []\n",
    ),
    case("unclosed brace", "WEFT0001", Error, "a: {b: 1\nc: 2 #<\n"),
    case(
        "bad indentation",
        "WEFT0001",
        Error,
        "apiVersion: v1\nkind: VirtualService\nmetadata:\n  name: a\n   namespace: b #<\n",
    ),
    case(
        "duplicate key",
        "WEFT0001",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: a\n  name: b #<\n",
    ),
    case(
        "wrong type",
        "WEFT0002",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        maxConnections: lots #<\n",
    ),
    case(
        "unparsable duration",
        "WEFT0002",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n    timeout: soon #<\n",
    ),
    case(
        "unknown field",
        "WEFT0003",
        Warning,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  htp: [] #<\n  http:\n  - route:\n    - destination: {host: r}\n",
    ),
    case(
        "unknown kind",
        "WEFT0004",
        Info,
        "apiVersion: v1 #<\nkind: ConfigMap\nmetadata:\n  name: x\n",
    ),
    case(
        "missing kind",
        "WEFT0005",
        Error,
        "apiVersion: networking.istio.io/v1 #<\nmetadata:\n  name: x\n",
    ),
    case(
        "missing name",
        "WEFT0005",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: #<\n  namespace: x\nspec:\n  hosts: [a]\n",
    ),
    case(
        "unknown version",
        "WEFT0007",
        Error,
        "apiVersion: networking.istio.io/v2 #<\nkind: VirtualService\nmetadata:\n  name: x\n",
    ),
    case(
        "istio kind in the wrong group",
        "WEFT0007",
        Error,
        "apiVersion: v1 #<\nkind: DestinationRule\nmetadata:\n  name: x\n",
    ),
    case("empty file", "WEFT0009", Error, "#<\n"),
    case(
        "unsupported istio kind",
        "WEFT0010",
        Warning,
        "apiVersion: networking.istio.io/v1alpha3 #<\nkind: EnvoyFilter\nmetadata:\n  name: x\n",
    ),
    case(
        "misspelt enum",
        "WEFT0113",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBN #<\n",
    ),
    case(
        "duplicate resource",
        "WEFT0011",
        Warning,
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n---\napiVersion: security.istio.io/v1 #<\nkind: PeerAuthentication\nmetadata:\n  name: default\n",
    ),
    // --- VirtualService ---
    case(
        "vs without hosts",
        "WEFT0101",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec: #<\n  http:\n  - route:\n    - destination: {host: r}\n",
    ),
    case(
        "destination without host",
        "WEFT0101",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: #<\n        subset: v1\n",
    ),
    case(
        "rule without action",
        "WEFT0101",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - timeout: 1s #<\n",
    ),
    case(
        "bad host",
        "WEFT0102",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts:\n  - bad_host! #<\n  http:\n  - route:\n    - destination: {host: r}\n",
    ),
    case(
        "star host on mesh",
        "WEFT0102",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts:\n  - \"*\" #<\n  http:\n  - route:\n    - destination: {host: r}\n",
    ),
    case(
        "negative weight",
        "WEFT0103",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r, subset: a}\n      weight: -10 #<\n    - destination: {host: r, subset: b}\n      weight: 110\n",
    ),
    case(
        "weights total zero",
        "WEFT0104",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route: #<\n    - destination: {host: r, subset: a}\n      weight: 0\n    - destination: {host: r, subset: b}\n      weight: 0\n",
    ),
    case(
        "weights not 100",
        "WEFT0105",
        Warning,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route: #<\n    - destination: {host: r}\n      weight: 30\n    - destination: {host: s}\n      weight: 30\n",
    ),
    case(
        "bad regex",
        "WEFT0106",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - match:\n    - uri:\n        regex: \"(unclosed\" #<\n    route:\n    - destination: {host: r}\n",
    ),
    case(
        "lookaround regex is not RE2",
        "WEFT0106",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - match:\n    - headers:\n        user-agent:\n          regex: \"(?!bot).*\" #<\n    route:\n    - destination: {host: r}\n",
    ),
    case(
        "zero timeout",
        "WEFT0107",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n    timeout: 0s #<\n",
    ),
    case(
        "sub-millisecond per-try timeout",
        "WEFT0107",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n    retries:\n      attempts: 2\n      perTryTimeout: 500us #<\n",
    ),
    case(
        "negative attempts",
        "WEFT0108",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n    retries:\n      attempts: -1 #<\n",
    ),
    case(
        "bad retryOn",
        "WEFT0108",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n    retries:\n      attempts: 2\n      retryOn: 5xx,sometimes #<\n",
    ),
    case(
        "retry fields with zero attempts",
        "WEFT0108",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n    retries:\n      attempts: 0 #<\n      perTryTimeout: 1s\n",
    ),
    case(
        "abort status out of range",
        "WEFT0109",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - fault:\n      abort:\n        httpStatus: 700 #<\n        percentage: {value: 5}\n    route:\n    - destination: {host: r}\n",
    ),
    case(
        "fault percentage over 100",
        "WEFT0110",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - fault:\n      delay:\n        fixedDelay: 1s\n        percentage:\n          value: 150 #<\n    route:\n    - destination: {host: r}\n",
    ),
    case(
        "mirror percentage negative",
        "WEFT0110",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n    mirror: {host: m}\n    mirrorPercentage:\n      value: -1 #<\n",
    ),
    case(
        "redirect with route",
        "WEFT0114",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - redirect: {uri: /new} #<\n    route:\n    - destination: {host: r}\n",
    ),
    case(
        "upper-case header match",
        "WEFT0116",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - match:\n    - headers:\n        X-User: #<\n          exact: bob\n    route:\n    - destination: {host: r}\n",
    ),
    case(
        "string match with two operators",
        "WEFT0117",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - match:\n    - uri: #<\n        exact: /a\n        prefix: /b\n    route:\n    - destination: {host: r}\n",
    ),
    case(
        "bad port",
        "WEFT0115",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination:\n        host: r\n        port:\n          number: 70000 #<\n",
    ),
    case(
        "invalid resource name",
        "WEFT0121",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: Reviews_VS #<\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n",
    ),
    // --- DestinationRule ---
    case(
        "dr without host",
        "WEFT0101",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec: #<\n  subsets:\n  - name: v1\n    labels: {version: v1}\n",
    ),
    case(
        "subset without name",
        "WEFT0112",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  subsets:\n  - labels: {version: v1} #<\n",
    ),
    case(
        "duplicate subset",
        "WEFT0112",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  subsets:\n  - name: v1\n    labels: {version: v1}\n  - name: v1 #<\n    labels: {version: v2}\n",
    ),
    case(
        "max ejection over 100",
        "WEFT0110",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  trafficPolicy:\n    outlierDetection:\n      consecutive5xxErrors: 5\n      maxEjectionPercent: 120 #<\n",
    ),
    case(
        "default max ejection",
        "WEFT0122",
        Warning,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  trafficPolicy:\n    outlierDetection: #<\n      consecutive5xxErrors: 5\n",
    ),
    case(
        "negative max connections",
        "WEFT0111",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        maxConnections: -1 #<\n",
    ),
    case(
        "simple and consistent hash",
        "WEFT0114",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  trafficPolicy:\n    loadBalancer: #<\n      simple: RANDOM\n      consistentHash: {useSourceIp: true}\n",
    ),
    case(
        "istio mutual with cert files",
        "WEFT0114",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  trafficPolicy:\n    tls: #<\n      mode: ISTIO_MUTUAL\n      clientCertificate: /etc/cert.pem\n",
    ),
    case(
        "bad subset label",
        "WEFT0118",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  subsets:\n  - name: v1\n    labels:\n      version: \"-v1-\" #<\n",
    ),
    // --- ServiceEntry, Gateway, Sidecar ---
    case(
        "service entry bad address",
        "WEFT0120",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: ext\nspec:\n  hosts: [api.example.com]\n  addresses:\n  - 10.0.0.300/8 #<\n  ports: [{number: 443, name: https, protocol: TLS}]\n  resolution: DNS\n",
    ),
    case(
        "service entry bad protocol",
        "WEFT0113",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: ext\nspec:\n  hosts: [api.example.com]\n  ports:\n  - number: 443\n    name: https\n    protocol: HTTPZ #<\n  resolution: DNS\n",
    ),
    case(
        "static without endpoints",
        "WEFT0101",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: db\nspec:\n  hosts: [db.internal]\n  ports: [{number: 5432, name: pg, protocol: TCP}]\n  resolution: STATIC #<\n",
    ),
    case(
        "gateway server without hosts",
        "WEFT0101",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP} #<\n",
    ),
    case(
        "sidecar egress host format",
        "WEFT0102",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: default\nspec:\n  egress:\n  - hosts:\n    - reviews #<\n",
    ),
    case(
        "service entry selector written as matchLabels",
        "WEFT0003",
        Warning,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: db\nspec:\n  hosts: [db.internal]\n  location: MESH_INTERNAL\n  ports: [{number: 5432, name: pg, protocol: TCP}]\n  resolution: STATIC\n  workloadSelector:\n    matchLabels: {app: db} #<\n",
    ),
    case(
        "service entry selector matches no workload entry",
        "WEFT0206",
        Warning,
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: vm\nspec:\n  address: 10.0.0.1\n  labels: {app: web}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: db\nspec:\n  hosts: [db.internal]\n  location: MESH_INTERNAL\n  ports: [{number: 5432, name: pg, protocol: TCP}]\n  resolution: STATIC\n  workloadSelector: #<\n    labels: {app: db}\n",
    ),
    // --- security ---
    case(
        "port-level mtls without selector",
        "WEFT0114",
        Error,
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\nspec:\n  mtls: {mode: STRICT}\n  portLevelMtls: #<\n    8080: {mode: DISABLE}\n",
    ),
    case(
        "misspelt mtls mode",
        "WEFT0113",
        Error,
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\nspec:\n  mtls:\n    mode: STICT #<\n",
    ),
    case(
        "custom without provider",
        "WEFT0101",
        Error,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: ext\nspec:\n  action: CUSTOM #<\n  rules: [{}]\n",
    ),
    case(
        "wildcard in the middle",
        "WEFT0119",
        Error,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\nspec:\n  rules:\n  - to:\n    - operation:\n        paths: [\"/api/*/items\"] #<\n",
    ),
    case(
        "a template operator after {**}",
        "WEFT0119",
        Error,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\nspec:\n  rules:\n  - to:\n    - operation:\n        paths: [\"/files/{**}/{*}\"] #<\n",
    ),
    case(
        "a template operator inside a segment",
        "WEFT0119",
        Error,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\nspec:\n  rules:\n  - to:\n    - operation:\n        paths: [\"/files/v{*}\"] #<\n",
    ),
    case(
        "unknown condition key",
        "WEFT0119",
        Error,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\nspec:\n  rules:\n  - when:\n    - key: request.colour #<\n      values: [blue]\n",
    ),
    case(
        "bad ip block",
        "WEFT0120",
        Error,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        ipBlocks: [\"not-an-ip\"] #<\n",
    ),
    case(
        "lower-case method",
        "WEFT0122",
        Warning,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\nspec:\n  rules:\n  - to:\n    - operation:\n        methods: [get] #<\n",
    ),
    case(
        "jwt rule without issuer",
        "WEFT0101",
        Error,
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\nspec:\n  jwtRules:\n  - jwksUri: https://example.com/jwks #<\n",
    ),
    // --- analysis ---
    case(
        "subset not defined",
        "WEFT0201",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n  subsets:\n  - name: v1\n    labels: {version: v1}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n        subset: v4 #<\n",
    ),
    case(
        "subset without any destination rule",
        "WEFT0208",
        Warning,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n        subset: v1 #<\n",
    ),
    case(
        "rule after catch-all",
        "WEFT0202",
        Warning,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n  - match: #<\n    - uri: {prefix: /admin}\n    route:\n    - destination: {host: admin}\n",
    ),
    case(
        "two destination rules for one host",
        "WEFT0203",
        Warning,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: a\nspec:\n  host: reviews\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: b\nspec:\n  host: reviews.default.svc.cluster.local #<\n",
    ),
    case(
        "conflicting virtual services",
        "WEFT0204",
        Warning,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: a\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: b\nspec:\n  hosts:\n  - reviews #<\n  http:\n  - route:\n    - destination: {host: reviews}\n",
    ),
    case(
        "strict mtls with tls disabled",
        "WEFT0205",
        Error,
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: prod\nspec:\n  mtls: {mode: STRICT}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: backend\n  namespace: web\nspec:\n  host: backend.prod.svc.cluster.local\n  trafficPolicy:\n    tls:\n      mode: DISABLE #<\n",
    ),
    case(
        "mesh-wide strict with tls disabled",
        "WEFT0205",
        Error,
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: istio-system\nspec:\n  mtls: {mode: STRICT}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: backend\nspec:\n  host: backend\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 8080}\n      tls:\n        mode: DISABLE #<\n",
    ),
    case(
        "selector matches nothing",
        "WEFT0206",
        Warning,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    metadata:\n      labels: {app: web}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\nspec:\n  selector: #<\n    matchLabels: {app: backend}\n  rules: [{}]\n",
    ),
    case(
        "subset selects nothing",
        "WEFT0207",
        Warning,
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: vm\nspec:\n  address: 10.0.0.1\n  labels: {app: reviews, version: v1}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n  subsets:\n  - name: v2\n    labels: #<\n      version: v2\n",
    ),
    case(
        "two default sidecars",
        "WEFT0209",
        Error,
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: a\nspec:\n  egress: [{hosts: [\"./*\"]}]\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: b\nspec: #<\n  egress: [{hosts: [\"./*\"]}]\n",
    ),
    case(
        "jwt claim route without authn",
        "WEFT0211",
        Warning,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - match:\n    - headers:\n        \"@request.auth.claims.group\": #<\n          exact: admin\n    route:\n    - destination: {host: r}\n",
    ),
    case(
        "field not implemented",
        "WEFT0301",
        Info,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  trafficPolicy:\n    proxyProtocol: #<\n      version: V2\n",
    ),
    case(
        "gateway passthrough server not implemented",
        "WEFT0301",
        Info,
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: g\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: ['*']\n  - port: {number: 8443, name: https, protocol: HTTPS}\n    hosts: ['*']\n    tls:\n      mode: PASSTHROUGH #<\n",
    ),
    case(
        "gateway tcp server not implemented",
        "WEFT0301",
        Info,
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: g\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port:\n      number: 31400\n      name: tcp\n      protocol: TCP #<\n    hosts: ['*']\n",
    ),
    case(
        "gateway credentialName not implemented",
        "WEFT0301",
        Info,
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: g\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*']\n    tls:\n      mode: SIMPLE\n      credentialName: shop-cert #<\n",
    ),
];

fn run(yaml: &str) -> Vec<Message> {
    let mut loader = Loader::new(Limits::default());
    loader.load_str("case.yaml", yaml);
    weft_api::check(&loader.finish())
}

#[test]
fn every_invalid_case_is_reported_with_code_level_and_line() {
    assert!(CASES.len() >= 40, "the table must keep at least 40 cases");
    let mut failures = Vec::new();
    for case in CASES {
        let expected_line = case
            .yaml
            .lines()
            .position(|l| l.contains("#<"))
            .map(|i| i as u32 + 1)
            .unwrap_or_else(|| panic!("case {:?} has no #< marker", case.name));
        let messages = run(case.yaml);
        let found = messages.iter().find(|m| {
            m.code.id == case.code
                && m.origin
                    .as_ref()
                    .is_some_and(|o| o.line == expected_line && &*o.file == "case.yaml")
        });
        match found {
            Some(m) if m.level() == case.level => {}
            Some(m) => failures.push(format!(
                "{}: level {:?}, expected {:?}",
                case.name,
                m.level(),
                case.level
            )),
            None => failures.push(format!(
                "{}: expected {} at line {expected_line}, got:\n    {}",
                case.name,
                case.code,
                messages
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join("\n    ")
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn valid_resources_raise_no_errors() {
    let yaml = format!(
        "{VS}spec:\n  hosts: [reviews]\n  http:\n  - match:\n    - uri: {{prefix: /v2}}\n    route:\n    - destination: {{host: reviews, subset: v2}}\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n      weight: 75\n    - destination: {{host: reviews, subset: v2}}\n      weight: 25\n---\n{DR}spec:\n  host: reviews\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n  - name: v2\n    labels: {{version: v2}}\n"
    );
    let messages = run(&yaml);
    assert!(messages.is_empty(), "{messages:#?}");
}

#[test]
fn kind_list_and_json_are_loaded_with_lines() {
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n  kind: VirtualService\n  metadata: {name: a}\n  spec:\n    hosts: [\"*\"]\n    http: []\n";
    let messages = run(list);
    let host = messages
        .iter()
        .find(|m| m.code.id == "WEFT0102")
        .expect("the bad host is reported");
    assert_eq!(host.origin.as_ref().map(|o| o.line), Some(8));

    let json = "{\n  \"apiVersion\": \"networking.istio.io/v1\",\n  \"kind\": \"DestinationRule\",\n  \"metadata\": {\"name\": \"r\"},\n  \"spec\": {\n    \"host\": \"r\",\n    \"subsets\": [{\"name\": \"Bad_Name\", \"labels\": {\"a\": \"b\"}}]\n  }\n}\n";
    let messages = run(json);
    let subset = messages
        .iter()
        .find(|m| m.code.id == "WEFT0112")
        .expect("the bad subset is reported");
    assert_eq!(subset.origin.as_ref().map(|o| o.line), Some(7));
}

#[test]
fn a_bad_document_does_not_lose_the_others() {
    let yaml = format!(
        "{VS}spec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {{host: a}}\n---\n{DR}spec:\n  host: 7\n  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: many}}}}}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\nspec:\n  mtls: {{mode: STRICT}}\n"
    );
    let mut loader = Loader::new(Limits::default());
    loader.load_str("mixed.yaml", &yaml);
    let loaded = loader.finish();
    let kinds: Vec<&str> = loaded.resources.iter().map(|r| r.kind().as_str()).collect();
    // The DestinationRule's two wrongly typed fields are each reported and dropped; the rest
    // of it still loads, so it can be analysed, and its Errors keep it from being applied.
    assert_eq!(
        kinds,
        ["VirtualService", "DestinationRule", "PeerAuthentication"]
    );
    let type_errors: Vec<u32> = loaded
        .messages
        .iter()
        .filter(|m| m.code.id == "WEFT0002")
        .filter_map(|m| m.origin.as_ref().map(|o| o.line))
        .collect();
    assert_eq!(type_errors, [16, 17]);
}
