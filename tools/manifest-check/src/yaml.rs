//! YAML, read with `serde-saphyr` (the workspace's YAML parser) into `serde_json::Value` trees,
//! which the checks walk.

use serde_json::Value;

/// Every document of a YAML stream, as JSON values; empty (null) documents are left out.
pub fn parse_yaml_docs(text: &str) -> Result<Vec<Value>, String> {
    serde_saphyr::from_multiple::<Value>(text).map_err(|e| format!("not valid YAML: {e}"))
}

#[cfg(test)]
mod tests {
    use super::parse_yaml_docs;
    use serde_json::json;

    #[test]
    fn every_document_as_json() {
        let docs = parse_yaml_docs(
            "# c\na: 1\nb: [x, \"2\", 0.0.0.0, true, ~]\n---\n---\nc: |\n  line\n...\n",
        )
        .expect("parses");
        assert_eq!(
            docs,
            vec![
                json!({"a": 1, "b": ["x", "2", "0.0.0.0", true, null]}),
                json!({"c": "line\n"})
            ]
        );
    }

    #[test]
    fn json_is_yaml() {
        let v = json!({"k": ["a", {"b": 1.5}], "s": "q'\"\n"});
        let text = serde_json::to_string_pretty(&v).expect("to JSON");
        assert_eq!(parse_yaml_docs(&text).expect("parses"), vec![v]);
    }

    #[test]
    fn invalid_yaml_is_an_error() {
        let e = parse_yaml_docs("a: [1, 2\n").unwrap_err();
        assert!(e.starts_with("not valid YAML"), "{e}");
    }
}
