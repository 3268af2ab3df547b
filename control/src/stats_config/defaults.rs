//! Envoy's default tag extractors (`Config::TagNames`, `well_known_names.cc`), in Envoy's
//! order: the regex descriptors first, then the tokenized ones, as
//! `TagProducerImpl::addDefaultExtractors` adds them. The regexes are Envoy's after its
//! `expandRegex` substitutions, written in the `regex` crate's syntax (RE2's, the same).

/// One default extractor.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Default {
    /// `addRe2(name, regex, substr, negative_match)`.
    Re2 {
        name: &'static str,
        regex: &'static str,
        substr: &'static str,
        negative: &'static str,
    },
    /// `addTokenized(name, pattern)`.
    Tokens {
        name: &'static str,
        pattern: &'static str,
    },
}

impl Default {
    /// The tag name.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Default::Re2 { name, .. } | Default::Tokens { name, .. } => name,
        }
    }
}

const fn re2(name: &'static str, regex: &'static str, substr: &'static str) -> Default {
    Default::Re2 {
        name,
        regex,
        substr,
        negative: "",
    }
}

const fn tokens(name: &'static str, pattern: &'static str) -> Default {
    Default::Tokens { name, pattern }
}

// Envoy's `<ADDRESS>`, `<TAG_VALUE>`, `<CIPHER>`, `<LISTENER_OR_CLUSTER_WITH_NAME>` expanded.
/// Every default extractor, in the order Envoy adds them.
pub(crate) const DEFAULTS: &[Default] = &[
    re2("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_"),
    re2("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_"),
    re2(
        "envoy.dynamo_partition_id",
        r"^http\.[^\.]+\.dynamodb\.table\.[^\.]+\.capacity\.[^\.]+(\.__partition_id=(\w{7}))$",
        ".dynamodb.table.",
    ),
    re2(
        "envoy.dynamo_operation",
        r"^http\.[^\.]+\.dynamodb.(?:operation|table\.[^\.]+\.capacity)(\.([^\.]+))(?:\.|$)",
        ".dynamodb.",
    ),
    re2(
        "envoy.dynamo_table",
        r"^http\.[^\.]+\.dynamodb.(?:table|error)\.(([^\.]+)\.)",
        ".dynamodb.",
    ),
    re2(
        "envoy.ssl_cipher",
        r"^listener\..*?\.ssl\.ciphers(\.([\w-]+))$",
        ".ssl.ciphers.",
    ),
    re2(
        "envoy.ssl_curve",
        r"^(?:listener|cluster)\..*?\.ssl\.curves(\.([\w-]+))$",
        ".ssl.curves.",
    ),
    re2(
        "envoy.ssl_sigalg",
        r"^(?:listener|cluster)\..*?\.ssl\.sigalgs(\.([\w-]+))$",
        ".ssl.sigalgs.",
    ),
    re2(
        "envoy.ssl_version",
        r"^(?:listener|cluster)\..*?\.ssl\.versions(\.(TLSv\d\.\d))$",
        ".ssl.versions.",
    ),
    re2(
        "cipher_suite",
        r"^cluster\.[^\.]+\.ssl\.ciphers(\.([\w-]+))$",
        ".ssl.ciphers.",
    ),
    re2(
        "envoy.http_conn_manager_prefix",
        r"^listener\..*?\.http\.(([^\.]+)\.)",
        ".http.",
    ),
    re2(
        "envoy.worker_id",
        r"^(?:listener\.(?:(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)|[^\.]+)|server|listener_manager|thread_local_cluster_manager)\.worker_((\d+)\.)",
        "",
    ),
    Default::Re2 {
        name: "envoy.listener_address",
        regex: r"^listener\.(((?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)|[^\.]+)\.)",
        substr: "",
        negative: "admin",
    },
    re2(
        "envoy.rds_route_config",
        r"^http\.[^\.]+\.rds\.(([\w\-\./]+)\.)\w+?$",
        ".rds.",
    ),
    re2(
        "envoy.scoped_rds_config",
        r"^http\.[^\.]+\.scoped_rds\.(([\w\-\.]+)\.)\w+?$",
        ".scoped_rds.",
    ),
    re2(
        "envoy.rbac_policy_name",
        r"^http\.[^\.]+\.rbac\.(?:[^\.]+\.)?policy\.(([^\.]+)\.)(allowed|shadow_allowed|denied|shadow_denied)$",
        "",
    ),
    Default::Re2 {
        name: "envoy.rbac_http_prefix",
        regex: r"^http\.[^\.]+\.rbac\.(([^\.]+)\.).*?",
        substr: "",
        negative: "policy",
    },
    Default::Re2 {
        name: "envoy.proxy_protocol_prefix",
        regex: r"^proxy_proto\.(([^\.]+)\.).+$",
        substr: "",
        negative: "versions",
    },
    re2(
        "envoy.proxy_protocol_version",
        r"^proxy_proto\.((?:[^\.]+\.)?versions\.v(\d)\.)\w+$",
        "",
    ),
    re2(
        "envoy.tls_certificate",
        r"^(?:listener|cluster)\..*?\.ssl\.certificate\.(([^\.]+)\.).*$",
        ".ssl.certificate",
    ),
    re2("envoy.xds_resource_name", r"^sds\.(([^\.]+)\.).+", ""),
    tokens(
        "envoy.mongo_callsite",
        "mongo.*.collection.*.callsite.$.query.**",
    ),
    tokens("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
    tokens("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
    tokens("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
    tokens("envoy.http_user_agent", "http.*.user_agent.$.**"),
    tokens("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    tokens("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    tokens("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
    tokens("envoy.tcp_prefix", "tcp.$.**"),
    tokens("envoy.udp_prefix", "udp.$.**"),
    tokens("envoy.clientssl_prefix", "auth.clientssl.$.**"),
    tokens("envoy.ratelimit_prefix", "ratelimit.$.**"),
    tokens("envoy.cluster_name", "cluster.$.**"),
    tokens("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
    tokens("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
    tokens("envoy.http_conn_manager_prefix", "http.$.**"),
    tokens("envoy.virtual_host", "vhost.$.**"),
    tokens("envoy.mongo_prefix", "mongo.$.**"),
    tokens("envoy.route", "vhost.*.route.$.**"),
    tokens("envoy.thrift_prefix", "thrift.$.**"),
    tokens("envoy.redis_prefix", "redis.$.**"),
    tokens(
        "envoy.local_http_ratelimit_prefix",
        "$.http_local_rate_limit.**",
    ),
    tokens(
        "envoy.local_network_ratelimit_prefix",
        "local_rate_limit.$.**",
    ),
    tokens(
        "envoy.local_listener_ratelimit_prefix",
        "listener_local_ratelimit.$.**",
    ),
    tokens("envoy.dns_filter_prefix", "dns_filter.$.**"),
    tokens("envoy.connection_limit_prefix", "connection_limit.$.**"),
    tokens("envoy.rbac_prefix", "$.rbac.**"),
    tokens("envoy.google_grpc_client_prefix", "grpc.$.**"),
];
