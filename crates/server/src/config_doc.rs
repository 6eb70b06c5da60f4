//! The configuration reference (`docs/configuration.md`, printed by `berth
//! config reference`) and the commented example configuration
//! (`deploy/berth.example.toml`, `berth config example`), both generated
//! from the JSON schema of [`Config`] and from `Config::default()`
//! serialized, so that neither the keys, their descriptions nor their
//! defaults can drift from the code.
//!
//! Nothing here names a section or a key: a new section of `Config` whose
//! types derive `JsonSchema` appears in both outputs by itself. Types come
//! from the schema, descriptions from the doc comments, defaults from
//! `Config::default()` (for tables that exist by default) or from the
//! schema's serde defaults (inside lists and maps of tables).

use std::fmt::Write;

use serde_json::{Map, Value};

use crate::config::Config;

/// The command that regenerates `docs/configuration.md`.
pub const REFERENCE_COMMAND: &str = "cargo run -p berth-server -- config reference > docs/configuration.md";
/// The command that regenerates `deploy/berth.example.toml`.
pub const EXAMPLE_COMMAND: &str = "cargo run -p berth-server -- config example > deploy/berth.example.toml";

/// The Markdown reference of every configuration key.
pub fn reference() -> String {
    let tables = tables();
    let mut out = String::new();
    out.push_str(&format!(
        "# Configuration reference\n\
         \n\
         <!-- Generated from the configuration types by `berth config reference`; do not\n     \
         edit. Regenerate with: {REFERENCE_COMMAND} -->\n\
         \n\
         Berth reads its configuration from these sources, later ones winning: the\n\
         defaults below, the TOML file given with `--config`, `BERTH_*` environment\n\
         variables, and the `--listen` and `--data-dir` flags.\n\
         \n\
         - A nested key is reached from the environment with a double underscore:\n  \
         `BERTH_AUTH__TOKEN__LIFETIME_SECS=600` sets `lifetime_secs` of `[auth.token]`.\n  \
         A list or a table is given whole as a TOML value:\n  \
         `BERTH_AUTH__ANONYMOUS='[\"public/*\"]'`.\n\
         - Keys the reference does not list are errors, in the file and in `BERTH_*`\n  \
         variables named after a section.\n\
         - Units are in the names: `_secs` seconds, `_days` days, `_bytes` bytes.\n\
         - `berth config check FILE` loads a file (and the environment) as `berth serve`\n  \
         would and reports each problem with its key, without opening any store.\n\
         - [`deploy/berth.example.toml`](../deploy/berth.example.toml) holds every option\n  \
         with its description and default, commented out.\n"
    ));
    for table in &tables {
        out.push('\n');
        if table.path.is_empty() {
            out.push_str("## Top level\n\nKeys before any section.\n\n");
        } else {
            out.push_str(&format!("## `{}`\n\n", table.header()));
        }
        if let Some(description) = &table.description {
            out.push_str(description);
            out.push_str("\n\n");
        }
        match table.kind {
            TableKind::Plain => {}
            TableKind::Optional => out.push_str("Absent unless configured.\n\n"),
            TableKind::ListItem => {
                out.push_str("A list of tables: repeat the section for each entry; none by default.\n\n")
            }
            TableKind::MapEntry => out.push_str("One section per `NAME`; none by default.\n\n"),
        }
        for key in &table.keys {
            let described = key.allowed.iter().any(|(_, d)| d.is_some());
            let mut facts = vec![if key.allowed.is_empty() || described {
                key.type_name.clone()
            } else {
                let values: Vec<String> = key.allowed.iter().map(|(v, _)| format!("`{v}`")).collect();
                format!("one of {}", values.join(", "))
            }];
            facts.push(key.default.describe(&key.name));
            if let (Some(example), false) = (&key.example, matches!(key.default, DefaultValue::Value(_))) {
                facts.push(format!("example `{}`", toml_value(example)));
            }
            if let Some(env) = &key.env {
                facts.push(format!("env `{env}`"));
            }
            let _ = write!(out, "- **`{}`** ({})", key.name, facts.join("; "));
            match &key.description {
                Some(description) => {
                    out.push_str("\\\n  ");
                    out.push_str(prefixed(description, "  ").trim_start());
                }
                None => out.push('\n'),
            }
            for (value, description) in key.allowed.iter().filter(|_| described) {
                match description {
                    Some(description) => {
                        let _ = writeln!(out, "  - `{value}`: {}", description.replace('\n', " "));
                    }
                    None => {
                        let _ = writeln!(out, "  - `{value}`");
                    }
                }
            }
        }
    }
    out
}

/// A TOML file with every option commented out, each with its description
/// and default: loaded as it is, it yields the defaults.
pub fn example() -> String {
    let tables = tables();
    let mut out = String::new();
    out.push_str(&format!(
        "# Berth configuration: every option, with its description and default.\n\
         #\n\
         # Generated from the configuration types by `berth config example`; do not\n\
         # edit. Regenerate with: {EXAMPLE_COMMAND}\n\
         # The reference with the environment variable of each key is\n\
         # docs/configuration.md.\n\
         #\n\
         # As shipped, this file sets nothing: every option is commented out, and\n\
         # loading it yields the defaults. Uncomment a line to change it. Lists of\n\
         # tables ([[...]]) and optional tables are commented out whole: take one\n\
         # `# ` off each of the section's lines, fill in its required keys, and\n\
         # uncomment any other key to set it. Check a file with\n\
         #   berth config check FILE\n"
    ));
    for table in &tables {
        let live = table.is_live(&tables);
        // The comment marker of a whole commented-out table, before its own comments too.
        let off = if live { "" } else { "# " };
        if !table.path.is_empty() {
            out.push('\n');
            if let Some(description) = &table.description {
                out.push_str(&prefixed(description, "# "));
            }
            match table.kind {
                TableKind::Plain => {}
                TableKind::Optional => out.push_str("# Absent unless configured.\n"),
                TableKind::ListItem => out.push_str("# A list of tables: repeat the section for each entry.\n"),
                TableKind::MapEntry => out.push_str("# One section per NAME.\n"),
            }
            let _ = writeln!(out, "{off}{}", table.header());
        }
        for key in &table.keys {
            out.push_str(if live { "\n" } else { "#\n" });
            if let Some(description) = &key.description {
                out.push_str(&prefixed(description, &format!("{off}# ")));
            }
            if !key.allowed.is_empty() {
                let values: Vec<&str> = key.allowed.iter().map(|(v, _)| v.as_str()).collect();
                let _ = writeln!(out, "{off}# One of: {}.", values.join(", "));
            }
            let example = || key.example.as_ref().map_or_else(|| key.placeholder.clone(), toml_value);
            let value = match &key.default {
                DefaultValue::Value(value) => toml_value(value),
                DefaultValue::Unset => {
                    let _ = writeln!(out, "{off}# Not set by default.");
                    example()
                }
                DefaultValue::Required => {
                    let _ = writeln!(out, "{off}# Required.");
                    example()
                }
            };
            // Uncommenting a whole table (taking one `# ` off each line)
            // sets its required keys and leaves the others commented out.
            let marker = match (&key.default, live) {
                (DefaultValue::Required, false) | (_, true) => "# ",
                _ => "# # ",
            };
            let hint = match &key.default {
                DefaultValue::Value(value) => value.as_u64().and_then(|n| unit_hint(&key.name, n)),
                _ => None,
            };
            let hint = hint.map(|h| format!("  # {h}")).unwrap_or_default();
            let _ = writeln!(out, "{marker}{} = {value}{hint}", key.name);
        }
    }
    out
}

/// `text` with `prefix` before each line, and no whitespace at line ends.
fn prefixed(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|line| format!("{prefix}{line}").trim_end().to_string() + "\n")
        .collect()
}

/// Where a table sits in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TableKind {
    /// A table that always exists (`[auth.token]`).
    Plain,
    /// A table that exists only when configured (`[storage.s3]`).
    Optional,
    /// An entry of a list of tables (`[[proxy.upstreams]]`).
    ListItem,
    /// The value of a map of tables by name (`[storage.stores.NAME]`).
    MapEntry,
}

/// One section of the reference.
#[derive(Debug)]
struct Table {
    /// The key path; `NAME` stands for the key of a map entry.
    path: Vec<String>,
    kind: TableKind,
    description: Option<String>,
    keys: Vec<Key>,
}

impl Table {
    fn header(&self) -> String {
        let path = self.path.join(".");
        match self.kind {
            TableKind::ListItem => format!("[[{path}]]"),
            _ => format!("[{path}]"),
        }
    }

    /// Whether the example shows this table's header uncommented: only
    /// tables that exist by default and all of whose enclosing tables do.
    fn is_live(&self, tables: &[Table]) -> bool {
        (0..=self.path.len()).all(|len| {
            tables
                .iter()
                .find(|t| t.path.as_slice() == &self.path[..len])
                .is_none_or(|t| t.kind == TableKind::Plain)
        })
    }
}

/// One key of a section.
#[derive(Debug)]
struct Key {
    name: String,
    type_name: String,
    /// Values of an enumeration, with their descriptions.
    allowed: Vec<(String, Option<String>)>,
    default: DefaultValue,
    /// The environment variable that sets it, unless it sits in a list or map.
    env: Option<String>,
    description: Option<String>,
    /// A typical value (`#[schemars(example = ...)]`) of a key without a default.
    example: Option<Value>,
    /// What the example file shows for a key without a default or an example.
    placeholder: String,
}

#[derive(Debug)]
enum DefaultValue {
    Value(Value),
    /// Optional, and absent by default.
    Unset,
    /// An entry of a list or map needs it.
    Required,
}

impl DefaultValue {
    fn describe(&self, key: &str) -> String {
        match self {
            DefaultValue::Value(value) => {
                let shown = format!("default `{}`", toml_value(value));
                match value.as_u64().and_then(|n| unit_hint(key, n)) {
                    Some(hint) => format!("{shown} = {hint}"),
                    None => shown,
                }
            }
            DefaultValue::Unset => "not set by default".into(),
            DefaultValue::Required => "required".into(),
        }
    }
}

/// A number of seconds or bytes written for humans.
fn unit_hint(key: &str, n: u64) -> Option<String> {
    if key.ends_with("_secs") && n >= 60 {
        return Some(humantime::format_duration(std::time::Duration::from_secs(n)).to_string());
    }
    if key.ends_with("_bytes") && n >= 1024 {
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n.is_multiple_of(size) {
                return Some(format!("{} {unit}", n / size));
            }
        }
    }
    None
}

/// Every section of the configuration, the top level first, each table's
/// own keys before the tables inside it, in the order the types declare them.
fn tables() -> Vec<Table> {
    let schema = serde_json::to_value(schemars::schema_for!(Config)).unwrap_or(Value::Null);
    let defaults = serde_json::to_value(Config::default()).unwrap_or(Value::Null);
    let orders = field_order::of::<Config>();
    let walker = Walker {
        root: &schema,
        orders: &orders,
    };
    let mut tables = Vec::new();
    walker.table(
        &schema,
        Vec::new(),
        TableKind::Plain,
        None,
        Some(&defaults),
        &mut tables,
    );
    tables
}

/// Reads the schema, resolving its `$ref`s against the root.
struct Walker<'a> {
    root: &'a Value,
    /// The order the types declare their fields in, by table path.
    orders: &'a field_order::Orders,
}

/// What one schema node is, for the reference.
enum Shape {
    /// A struct: a table of its own.
    Table(Value),
    /// A list of structs.
    ListOfTables(Value),
    /// A map from names to structs.
    MapOfTables(Value),
    /// Anything written as one value.
    Value(Value),
}

impl<'a> Walker<'a> {
    /// The schema `schema` points to, through any `$ref`.
    fn resolve(&self, schema: &Value) -> Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference.trim_start_matches('#');
                let target = self.root.pointer(pointer).cloned().unwrap_or(Value::Null);
                self.resolve(&with_description(target, schema))
            }
            None => schema.clone(),
        }
    }

    /// `schema` without its `null` alternative, and whether it had one.
    fn without_null(&self, schema: &Value) -> (Value, bool) {
        let schema = self.resolve(schema);
        if let Some(types) = schema.get("type").and_then(Value::as_array) {
            if types.iter().any(|t| t == "null") {
                let rest: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
                let mut schema = schema.clone();
                schema["type"] = match <[Value; 1]>::try_from(rest) {
                    Ok([only]) => only,
                    Err(rest) => Value::Array(rest),
                };
                return (schema, true);
            }
        }
        if let Some(any_of) = schema.get("anyOf").and_then(Value::as_array) {
            let rest: Vec<&Value> = any_of
                .iter()
                .filter(|s| s.get("type") != Some(&"null".into()))
                .collect();
            if rest.len() == 1 && any_of.len() == 2 {
                return (with_description(self.resolve(rest[0]), &schema), true);
            }
        }
        (schema, false)
    }

    fn shape(&self, schema: &Value) -> (Shape, bool) {
        let (schema, nullable) = self.without_null(schema);
        let shape = if schema.get("properties").is_some() {
            Shape::Table(schema)
        } else if let Some(items) = schema
            .get("items")
            .filter(|_| schema.get("type") == Some(&"array".into()))
        {
            let items = self.resolve(items);
            if items.get("properties").is_some() {
                Shape::ListOfTables(with_description(items, &schema))
            } else {
                Shape::Value(schema)
            }
        } else if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            let values = self.resolve(values);
            if values.get("properties").is_some() {
                Shape::MapOfTables(with_description(values, &schema))
            } else {
                Shape::Value(schema)
            }
        } else {
            Shape::Value(schema)
        };
        (shape, nullable)
    }

    /// Adds the table `schema` at `path` to `tables`, then the tables inside it.
    /// `defaults` is the table's serialized default, when it exists by default.
    fn table(
        &self,
        schema: &Value,
        path: Vec<String>,
        kind: TableKind,
        description: Option<String>,
        defaults: Option<&Value>,
        tables: &mut Vec<Table>,
    ) {
        let empty = Map::new();
        let properties = schema.get("properties").and_then(Value::as_object).unwrap_or(&empty);
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let in_list_or_map = path.iter().any(|p| p == "NAME") || kind == TableKind::ListItem;
        let index = tables.len();
        tables.push(Table {
            path: path.clone(),
            kind,
            description,
            keys: Vec::new(),
        });
        let mut children = Vec::new();
        // Declaration order; a field the recorder missed goes last, sorted.
        let declared = self.orders.get(&path);
        let position = |name: &str| {
            declared
                .and_then(|d| d.iter().position(|f| *f == name))
                .unwrap_or(usize::MAX)
        };
        let mut properties: Vec<(&String, &Value)> = properties.iter().collect();
        properties.sort_by_key(|(name, _)| position(name));
        for (name, property) in properties {
            let mut key_path = path.clone();
            key_path.push(name.clone());
            let (shape, nullable) = self.shape(property);
            let default_here = defaults.and_then(|d| d.get(name));
            match shape {
                Shape::Table(inner) => {
                    let kind = if nullable || (defaults.is_some() && default_here.is_none()) {
                        TableKind::Optional
                    } else {
                        kind_inside(kind)
                    };
                    children.push((inner, key_path, kind, default_here));
                }
                Shape::ListOfTables(items) => children.push((items, key_path, TableKind::ListItem, None)),
                Shape::MapOfTables(values) => {
                    key_path.push("NAME".into());
                    children.push((values, key_path, TableKind::MapEntry, None));
                }
                Shape::Value(value) => {
                    let default = match defaults {
                        Some(defaults) => match defaults.get(name) {
                            Some(value) if !value.is_null() => DefaultValue::Value(value.clone()),
                            _ => DefaultValue::Unset,
                        },
                        // `x-required`: a field serde may default but the
                        // server refuses empty (`#[schemars(extend("x-required" = true))]`).
                        None if (required.contains(&name.as_str()) && !nullable)
                            || property.get("x-required") == Some(&Value::Bool(true)) =>
                        {
                            DefaultValue::Required
                        }
                        None => match value.get("default").filter(|d| !d.is_null()) {
                            Some(default) => DefaultValue::Value(default.clone()),
                            // serde's default of a list or map that is left out
                            // when empty: the schema omits it, but it is there.
                            None if !nullable && value.get("type") == Some(&"array".into()) => {
                                DefaultValue::Value(Value::Array(Vec::new()))
                            }
                            None if !nullable && value.get("type") == Some(&"object".into()) => {
                                DefaultValue::Value(Value::Object(Map::new()))
                            }
                            None => DefaultValue::Unset,
                        },
                    };
                    let allowed = self.allowed_values(&value);
                    tables[index].keys.push(Key {
                        name: name.clone(),
                        type_name: self.type_name(&value, !allowed.is_empty()),
                        example: value
                            .get("examples")
                            .and_then(Value::as_array)
                            .and_then(|e| e.first())
                            .cloned(),
                        placeholder: placeholder(&value),
                        allowed,
                        default,
                        env: (!in_list_or_map).then(|| format!("BERTH_{}", key_path.join("__").to_uppercase())),
                        description: description_of(&value),
                    });
                }
            }
        }
        for (inner, key_path, kind, default_here) in children {
            let description = match kind {
                TableKind::Plain | TableKind::Optional => section_description_of(&inner),
                TableKind::ListItem | TableKind::MapEntry => description_of(&inner),
            };
            self.table(&inner, key_path, kind, description, default_here, tables);
        }
    }

    /// The values of an enumeration, with the doc comments of its variants.
    fn allowed_values(&self, schema: &Value) -> Vec<(String, Option<String>)> {
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            return values.iter().map(|v| (scalar_text(v), None)).collect();
        }
        let alternatives = schema
            .get("oneOf")
            .or_else(|| schema.get("anyOf"))
            .and_then(Value::as_array);
        let mut allowed = Vec::new();
        for alternative in alternatives.into_iter().flatten() {
            let alternative = self.resolve(alternative);
            let description = description_of(&alternative);
            if let Some(value) = alternative.get("const") {
                allowed.push((scalar_text(value), description));
            } else if let Some(values) = alternative.get("enum").and_then(Value::as_array) {
                allowed.extend(values.iter().map(|v| (scalar_text(v), description.clone())));
            }
        }
        allowed
    }

    fn type_name(&self, schema: &Value, enumeration: bool) -> String {
        if enumeration {
            return "string".into();
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("array") => {
                let items = schema.get("items").map(|i| self.resolve(i)).unwrap_or(Value::Null);
                format!("list of {}s", self.type_name(&items, false))
            }
            Some("object") => {
                let values = schema
                    .get("additionalProperties")
                    .map(|v| self.resolve(v))
                    .unwrap_or(Value::Null);
                format!("table of {}s", self.type_name(&values, false))
            }
            Some(other) => other.to_string(),
            None => "value".into(),
        }
    }
}

/// The kind of a plain table inside a table of `kind`: inside a list or map
/// entry, or an optional table, it exists only with its parent.
fn kind_inside(kind: TableKind) -> TableKind {
    match kind {
        TableKind::Plain => TableKind::Plain,
        _ => TableKind::Optional,
    }
}

/// `inner` with the description of `outer` when it has one (a field's doc
/// comment says more about a list than the item type's).
/// The type's own doc comment is kept as `x-type-description`: a section
/// is better described by its type (`StorageConfig` says what the stores
/// are), a key by its field.
fn with_description(mut inner: Value, outer: &Value) -> Value {
    if let (Some(inner), Some(description)) = (inner.as_object_mut(), outer.get("description")) {
        if let Some(own) = inner.get("description").cloned() {
            inner.entry("x-type-description").or_insert(own);
        }
        inner.insert("description".into(), description.clone());
    }
    inner
}

/// What the field or the type of `schema` says about it.
fn description_of(schema: &Value) -> Option<String> {
    doc_text(schema.get("description"))
}

/// What the type of a section says about it, else its field.
fn section_description_of(schema: &Value) -> Option<String> {
    doc_text(schema.get("x-type-description")).or_else(|| description_of(schema))
}

/// A doc comment as the reference shows it: without the rustdoc links and
/// without a leading "`[section]`: " that the heading already says.
fn doc_text(doc: Option<&Value>) -> Option<String> {
    let doc = doc.and_then(Value::as_str)?.trim();
    let doc = match doc.strip_prefix('`').and_then(|rest| rest.split_once("`: ")) {
        Some((header, rest)) if header.starts_with('[') && header.ends_with(']') => {
            let mut chars = rest.chars();
            chars
                .next()
                .map_or_else(String::new, |first| first.to_uppercase().chain(chars).collect())
        }
        _ => doc.to_string(),
    };
    // [`Name`] is a rustdoc link; [`Name`](url) a Markdown one, kept.
    let mut text = String::with_capacity(doc.len());
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("[`") {
        text.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find("`]") {
            Some(end) if !after[end + 2..].starts_with('(') => {
                text.push_str(&after[..end + 1]);
                rest = &after[end + 2..];
            }
            _ => {
                text.push('[');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    Some(lines.join("\n")).filter(|d| !d.is_empty())
}

/// What the example shows as the value of a key without a default.
fn placeholder(schema: &Value) -> String {
    match schema.get("type").and_then(Value::as_str) {
        Some("integer") | Some("number") => "0".into(),
        Some("boolean") => "false".into(),
        Some("array") => "[]".into(),
        Some("object") => "{}".into(),
        _ => "\"\"".into(),
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `value` as TOML writes it inline.
fn toml_value(value: &Value) -> String {
    match value {
        // A JSON string literal is a valid TOML basic string for everything
        // a configuration value holds (serde_json escapes as TOML does).
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Array(items) => format!("[{}]", items.iter().map(toml_value).collect::<Vec<_>>().join(", ")),
        Value::Object(entries) if entries.is_empty() => "{}".into(),
        Value::Object(entries) => format!(
            "{{ {} }}",
            entries
                .iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Null => "\"\"".into(),
        other => other.to_string(),
    }
}

fn toml_key(key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        key.to_string()
    } else {
        serde_json::to_string(key).unwrap_or_default()
    }
}

/// The order in which the configuration types declare their fields, which
/// the schema's (sorted) maps lose: a deserializer that records the field
/// list serde hands it for every struct, by key path, while it feeds the
/// type placeholder values. Lists are walked through one item and maps
/// through one entry named `NAME`, as [`tables`] names them.
mod field_order {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use serde::de::value::{Error, StrDeserializer};
    use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};

    /// Field names by key path.
    pub type Orders = HashMap<Vec<String>, Vec<&'static str>>;

    /// The field orders of `T` and every struct inside it. A type the
    /// recorder cannot feed leaves its fields out; they are then sorted.
    pub fn of<'de, T: serde::Deserialize<'de>>() -> Orders {
        let orders = RefCell::new(HashMap::new());
        let _ = T::deserialize(Recorder {
            path: Vec::new(),
            orders: &orders,
        });
        orders.into_inner()
    }

    struct Recorder<'a> {
        path: Vec<String>,
        orders: &'a RefCell<Orders>,
    }

    impl<'a> Recorder<'a> {
        fn at(&self, key: &str) -> Recorder<'a> {
            let mut path = self.path.clone();
            path.push(key.to_string());
            Recorder {
                path,
                orders: self.orders,
            }
        }
    }

    impl<'de> Deserializer<'de> for Recorder<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
            Err(de::Error::custom("a type the field-order recorder does not know"))
        }

        fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_bool(false)
        }

        fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_u64(0)
        }

        fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_u64(0)
        }

        fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_u64(0)
        }

        fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_u64(0)
        }

        fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_i64(0)
        }

        fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_i64(0)
        }

        fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_i64(0)
        }

        fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_i64(0)
        }

        fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_f64(0.0)
        }

        fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_f64(0.0)
        }

        fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_str("")
        }

        fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_str("")
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_some(self)
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_seq(OneItem(Some(self)))
        }

        fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let entry = self.at("NAME");
            visitor.visit_map(Fields {
                keys: ["NAME"].iter(),
                values: vec![entry].into_iter(),
                value: None,
            })
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            self.orders.borrow_mut().insert(self.path.clone(), fields.to_vec());
            let values: Vec<Recorder<'_>> = fields.iter().map(|f| self.at(f)).collect();
            visitor.visit_map(Fields {
                keys: fields.iter(),
                values: values.into_iter(),
                value: None,
            })
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            name: &'static str,
            variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            let first: StrDeserializer<'_, Error> = variants.first().copied().unwrap_or("").into_deserializer();
            first.deserialize_enum(name, variants, visitor)
        }

        serde::forward_to_deserialize_any! {
            char bytes byte_buf unit unit_struct tuple tuple_struct identifier ignored_any
        }
    }

    /// A list of one item.
    struct OneItem<'a>(Option<Recorder<'a>>);

    impl<'de> SeqAccess<'de> for OneItem<'_> {
        type Error = Error;

        fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
            self.0.take().map(|item| seed.deserialize(item)).transpose()
        }
    }

    /// The fields of a struct, or the one entry of a map.
    struct Fields<'a> {
        keys: std::slice::Iter<'static, &'static str>,
        values: std::vec::IntoIter<Recorder<'a>>,
        value: Option<Recorder<'a>>,
    }

    impl<'de> MapAccess<'de> for Fields<'_> {
        type Error = Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
            match (self.keys.next(), self.values.next()) {
                (Some(key), Some(value)) => {
                    self.value = Some(value);
                    seed.deserialize(key.into_deserializer()).map(Some)
                }
                _ => Ok(None),
            }
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
            let value = self
                .value
                .take()
                .ok_or_else(|| de::Error::custom("a value without a key"))?;
            seed.deserialize(value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_a_type_and_a_description() {
        let undocumented: Vec<String> = tables()
            .iter()
            .flat_map(|t| {
                t.keys
                    .iter()
                    .filter(|k| k.description.is_none())
                    .map(move |k| format!("{}.{}", t.path.join("."), k.name))
            })
            .collect();
        assert!(
            undocumented.is_empty(),
            "add a doc comment to each of these configuration fields: {undocumented:?}"
        );
        let untitled: Vec<String> = tables()
            .iter()
            .filter(|t| !t.path.is_empty() && t.description.is_none())
            .map(Table::header)
            .collect();
        assert!(
            untitled.is_empty(),
            "add a doc comment to these sections' fields or types: {untitled:?}"
        );
    }

    /// A committed file of the repository, and how to regenerate it when it differs.
    fn assert_generated(path: &str, generated: &str, command: &str) {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(path);
        let committed = std::fs::read_to_string(&file).unwrap_or_default();
        if committed != generated {
            let line = committed
                .lines()
                .zip(generated.lines())
                .position(|(a, b)| a != b)
                .map_or_else(|| "the end".to_string(), |n| format!("line {}", n + 1));
            panic!(
                "{path} differs from what the configuration types generate (first at {line}); \
                 regenerate it with\n    {command}\nand commit it"
            );
        }
    }

    #[test]
    fn docs_configuration_md_is_the_generated_reference() {
        assert_generated("docs/configuration.md", &reference(), REFERENCE_COMMAND);
    }

    #[test]
    fn deploy_berth_example_toml_is_the_generated_example() {
        assert_generated("deploy/berth.example.toml", &example(), EXAMPLE_COMMAND);
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment::Jail fixes the closures' error type")]
    fn the_example_loads_as_the_defaults_and_passes_the_checks() {
        figment::Jail::expect_with(|jail| {
            // Only the file: a BERTH_* variable of the caller would change the result.
            jail.clear_env();
            jail.create_file("berth.toml", &example())?;
            let loaded = Config::load(Some(std::path::Path::new("berth.toml")), Default::default())
                .map_err(|e| e.to_string())?;
            assert_eq!(
                serde_json::to_value(&loaded).map_err(|e| e.to_string())?,
                serde_json::to_value(Config::default()).map_err(|e| e.to_string())?
            );
            assert_eq!(crate::config_check::check(&loaded), Vec::new());
            Ok(())
        });
    }

    #[test]
    fn keys_and_sections_come_in_the_order_the_types_declare_them() {
        let tables = tables();
        let top: Vec<&str> = tables[0].keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(top[..2], ["listen", "data_dir"]);
        let headers: Vec<String> = tables.iter().skip(1).take(3).map(Table::header).collect();
        assert_eq!(headers, ["[log]", "[uploads]", "[limits]"]);
        let upstream = tables
            .iter()
            .find(|t| t.header() == "[[proxy.upstreams]]")
            .expect("upstreams");
        assert_eq!(upstream.keys[0].name, "name", "inside lists too");
    }

    #[test]
    fn defaults_come_from_the_default_configuration() {
        let reference = reference();
        assert!(reference.contains("## `[auth.token]`"), "{reference}");
        let lifetime = reference
            .lines()
            .find(|l| l.starts_with("- **`lifetime_secs`**"))
            .expect("auth.token.lifetime_secs is listed");
        assert!(
            lifetime.contains("default `900` = 15m") && lifetime.contains("env `BERTH_AUTH__TOKEN__LIFETIME_SECS`"),
            "{lifetime}"
        );
        assert!(reference.contains("## `[[proxy.upstreams]]`"));
        assert!(reference.contains("## `[storage.stores.NAME]`"));
        assert!(reference.contains("## `[storage.s3]`"));
    }
}
