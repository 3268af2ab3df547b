//! A `tcp_proxy`'s access logs: stdout, stderr or a file, each with Envoy's default format,
//! a text template or a JSON object of command operators (parsed by the data plane's
//! access log module, so a bad operator is refused here, with its path).

use super::{decode_any, type_name, Result};
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::rib::AccessLogConfig;
use crate::type_names::{FILE_LOG, STDERR_LOG, STDOUT_LOG};
use envoy_types::pb::envoy::config::accesslog::v3::{
    access_log, access_log_filter, AccessLog, AccessLogFilter,
};
use envoy_types::pb::envoy::config::core::v3::{
    data_source, substitution_format_string, SubstitutionFormatString,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    file_access_log, FileAccessLog,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stderr_access_log::AccessLogFormat as Stderr;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stdout_access_log::AccessLogFormat as Stdout;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog,
};
use envoy_types::pb::google::protobuf::value::Kind as PbKind;
use envoy_types::pb::google::protobuf::Struct;
use switchyard_dataplane::accesslog::{
    parse_json_value, parse_text_format, LogFilter, LogFormat, LogPath, ResponseFlags,
};

/// An `access_log` list at `path` (a tcp_proxy's, a listener's, a connection manager's).
pub(super) fn access_logs(logs: &[AccessLog], path: &str) -> Result<Vec<AccessLogConfig>> {
    logs.iter()
        .enumerate()
        .map(|(i, a)| access_log_config(a, &index(path, i)))
        .collect()
}

/// One `access_log` entry: its `typed_config` names the logger.
pub(super) fn access_log_config(a: &AccessLog, path: &str) -> Result<AccessLogConfig> {
    let filter = match &a.filter {
        Some(f) => log_filter(f, &field(path, "filter"))?,
        None => LogFilter::All,
    };
    let mut config = logger_config(a, path)?;
    config.filter = filter;
    Ok(config)
}

/// Envoy's response flag short codes (`ResponseFlagFilter.flags` accepts these only).
const ENVOY_FLAGS: &[&str] = &[
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO",
];

/// An access log's `filter`: `response_flag_filter` (any other filter is refused by the
/// walker). A flag Envoy knows and Switchyard never sets (an HTTP one) matches nothing.
fn log_filter(f: &AccessLogFilter, path: &str) -> Result<LogFilter> {
    let Some(access_log_filter::FilterSpecifier::ResponseFlagFilter(r)) = &f.filter_specifier
    else {
        return Err(ConfigError::invalid(path, "a filter is required"));
    };
    if r.flags.is_empty() {
        return Ok(LogFilter::AnyFlag);
    }
    let fpath = field(&field(path, "response_flag_filter"), "flags");
    let mut mask = 0u16;
    for (i, flag) in r.flags.iter().enumerate() {
        if !ENVOY_FLAGS.contains(&flag.as_str()) {
            return Err(ConfigError::invalid(
                index(&fpath, i),
                format!("'{flag}' is not a response flag"),
            ));
        }
        mask |= ResponseFlags::from_short_code(flag).unwrap_or(0);
    }
    Ok(LogFilter::Flags(mask))
}

/// The logger of an access log: its path and format.
fn logger_config(a: &AccessLog, path: &str) -> Result<AccessLogConfig> {
    let Some(access_log::ConfigType::TypedConfig(any)) = &a.config_type else {
        return Err(ConfigError::invalid(
            field(path, "typed_config"),
            "required",
        ));
    };
    let tpath = field(path, "typed_config");
    let (log_path, format) = match type_name(any) {
        STDOUT_LOG => {
            let log: StdoutAccessLog = decode_any(any, STDOUT_LOG, &tpath)?;
            let format = log.access_log_format.map(|Stdout::LogFormat(f)| f);
            (LogPath::Stdout, format)
        }
        STDERR_LOG => {
            let log: StderrAccessLog = decode_any(any, STDERR_LOG, &tpath)?;
            let format = log.access_log_format.map(|Stderr::LogFormat(f)| f);
            (LogPath::Stderr, format)
        }
        _ => return file_log(decode_any(any, FILE_LOG, &tpath)?, &tpath),
    };
    stream_log(log_path, format.as_ref(), &tpath)
}

/// A stdout or stderr logger: its `log_format`, or Envoy's default.
fn stream_log(
    path: LogPath,
    format: Option<&SubstitutionFormatString>,
    tpath: &str,
) -> Result<AccessLogConfig> {
    let format = match format {
        Some(f) => log_format(f, &field(tpath, "log_format"))?,
        None => LogFormat::EnvoyDefault,
    };
    Ok(AccessLogConfig {
        path,
        format,
        filter: LogFilter::All,
    })
}

/// A file logger: a path, and a format in any of the ways Envoy takes one.
fn file_log(log: FileAccessLog, tpath: &str) -> Result<AccessLogConfig> {
    if log.path.is_empty() {
        return Err(ConfigError::invalid(
            field(tpath, "path"),
            "required (non-empty)",
        ));
    }
    #[allow(deprecated)] // `format` and `json_format` are deprecated, still accepted.
    let format = match &log.access_log_format {
        None => LogFormat::EnvoyDefault,
        Some(file_access_log::AccessLogFormat::Format(s)) if s.is_empty() => {
            LogFormat::EnvoyDefault
        }
        Some(file_access_log::AccessLogFormat::Format(s)) => {
            text_format(s, &field(tpath, "format"))?
        }
        Some(file_access_log::AccessLogFormat::JsonFormat(s)) => {
            json_format(s, &field(tpath, "json_format"))?
        }
        Some(file_access_log::AccessLogFormat::LogFormat(f)) => {
            log_format(f, &field(tpath, "log_format"))?
        }
        Some(_) => {
            return Err(ConfigError::unsupported(
                tpath,
                "this format is not supported by Switchyard",
            ))
        }
    };
    Ok(AccessLogConfig {
        path: LogPath::File(log.path.into()),
        format,
        filter: LogFilter::All,
    })
}

fn log_format(f: &SubstitutionFormatString, path: &str) -> Result<LogFormat> {
    use substitution_format_string::Format;
    #[allow(deprecated)] // `text_format` is deprecated, still accepted.
    match &f.format {
        Some(Format::TextFormat(s)) => text_format(s, &field(path, "text_format")),
        Some(Format::TextFormatSource(ds)) => match &ds.specifier {
            Some(data_source::Specifier::InlineString(s)) => text_format(
                s,
                &field(&field(path, "text_format_source"), "inline_string"),
            ),
            _ => Err(ConfigError::invalid(
                field(path, "text_format_source"),
                "inline_string is required",
            )),
        },
        Some(Format::JsonFormat(s)) => json_format(s, &field(path, "json_format")),
        None => Err(ConfigError::invalid(
            path,
            "one of 'text_format_source' or 'json_format' is required",
        )),
    }
}

fn text_format(template: &str, path: &str) -> Result<LogFormat> {
    parse_text_format(template)
        .map(LogFormat::Text)
        .map_err(|e| ConfigError::invalid(path, e))
}

/// `json_format`: keys in sorted order (a protobuf `Struct` keeps no order).
fn json_format(s: &Struct, path: &str) -> Result<LogFormat> {
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let kpath = field(path, key);
        match &s.fields[key].kind {
            Some(PbKind::StringValue(v)) => {
                let segment = parse_json_value(v).map_err(|e| ConfigError::invalid(&kpath, e))?;
                out.push((key.clone(), segment));
            }
            _ => return Err(ConfigError::unsupported(
                kpath,
                "only string values (a command operator or a literal) are supported by Switchyard",
            )),
        }
    }
    Ok(LogFormat::Json(out))
}
