//! A structural check of a manifest against the CRD's OpenAPI schema: unknown fields, missing
//! required fields, types, enums and minimums. It is not the API server (CEL rules and formats
//! are left to it); it lets the examples and the kind scenarios' manifests be checked without
//! a cluster.

use serde_json::Value;

/// The `openAPIV3Schema` of the CRD's first version.
pub fn crd_schema(crd: &Value) -> Option<&Value> {
    crd["spec"]["versions"][0]["schema"]
        .get("openAPIV3Schema")
        .filter(|s| s.is_object())
}

/// Every way `value` breaks `schema`, as `path: problem`.
pub fn violations(value: &Value, schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    check(value, schema, "", &mut problems);
    problems
}

fn check(value: &Value, schema: &Value, path: &str, problems: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true
        || schema["x-kubernetes-int-or-string"] == true
    {
        return;
    }
    if value.is_null() {
        if schema["nullable"] != true {
            problems.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        problems.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    let expected = schema["type"].as_str().unwrap_or_default();
    let type_ok = match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        problems.push(format!("{path}: expected {expected}, got {value}"));
        return;
    }
    if let (Some(minimum), Some(number)) = (schema["minimum"].as_f64(), value.as_f64())
        && number < minimum
    {
        problems.push(format!("{path}: {value} is below the minimum {minimum}"));
    }
    if let (Some(maximum), Some(number)) = (schema["maximum"].as_f64(), value.as_f64())
        && number > maximum
    {
        problems.push(format!("{path}: {value} is above the maximum {maximum}"));
    }
    if let (Some(min_length), Some(text)) = (schema["minLength"].as_u64(), value.as_str())
        && (text.chars().count() as u64) < min_length
    {
        problems.push(format!("{path}: shorter than {min_length}"));
    }
    if let Some(items) = value.as_array() {
        for (index, item) in items.iter().enumerate() {
            check(
                item,
                &schema["items"],
                &format!("{path}[{index}]"),
                problems,
            );
        }
    }
    let Some(fields) = value.as_object() else {
        return;
    };
    for required in schema["required"].as_array().into_iter().flatten() {
        if let Some(name) = required.as_str()
            && !fields.contains_key(name)
        {
            problems.push(format!("{path}.{name}: required"));
        }
    }
    let properties = schema["properties"].as_object();
    let additional = &schema["additionalProperties"];
    for (name, field) in fields {
        let field_path = format!("{path}.{name}");
        match properties.and_then(|p| p.get(name)) {
            Some(field_schema) => check(field, field_schema, &field_path, problems),
            None if additional.is_object() => check(field, additional, &field_path, problems),
            // Every object carries metadata the CRD schema leaves to the API server.
            None if path.is_empty()
                && ["apiVersion", "kind", "metadata"].contains(&name.as_str()) => {}
            None => problems.push(format!("{field_path}: unknown field")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["spec"],
            "properties": {"spec": {
                "type": "object",
                "required": ["parallelism"],
                "properties": {
                    "parallelism": {"type": "integer", "minimum": 1.0},
                    "mode": {"type": "string", "enum": ["a", "b"]},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "limits": {"type": "object", "additionalProperties": {"x-kubernetes-int-or-string": true}},
                },
            }},
        })
    }

    #[test]
    fn a_valid_object_passes() {
        let value = json!({"kind": "X", "spec": {"parallelism": 2, "mode": "a", "free": {"any": 1}, "limits": {"cpu": "1"}}});
        assert_eq!(violations(&value, &schema()), Vec::<String>::new());
    }

    #[test]
    fn unknown_missing_enum_and_minimum_are_reported() {
        let value = json!({"spec": {"parallelism": 0, "mode": "c", "typo": true}});
        let problems = violations(&value, &schema());
        assert_eq!(problems.len(), 3, "{problems:?}");
        let missing = violations(&json!({"spec": {}}), &schema());
        assert_eq!(missing, [".spec.parallelism: required"]);
    }
}
