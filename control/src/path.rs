//! Field paths in errors: `static_resources.clusters[0].connect_timeout`, in proto field
//! names with list indices. A leaf shared by `config` (the walker) and `convert`, so every
//! error names its field the same way.

/// Joins a field onto a path (`a` + `b` = `a.b`; the root path is empty).
pub(crate) fn field(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Joins a list index onto a path (`a` + 3 = `a[3]`).
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}
