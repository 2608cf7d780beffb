//! The one reader of `sam/template.yaml` as YAML: resources by type, functions with what they
//! inherit from `Globals.Function`, intrinsics in their short (`!Ref X`) and long (`Ref: X`)
//! forms. [`super::Template`] is built on it, and so are the checks of tests/template.rs, which
//! read parts of the template the local stack has no use for (policies, the stage, alarms).

use std::collections::{BTreeMap, BTreeSet};

use serde_norway::{Mapping, Value};

/// The value at `path` (mapping keys) under `v`.
pub fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(*key))
}

/// A scalar as text: a string, a number or a boolean.
pub fn scalar(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A whole number, written as a number or as text.
pub fn number(v: Option<&Value>) -> Option<u64> {
    scalar(v)?.parse().ok()
}

/// The argument of an intrinsic function, in its short (`!Sub x`) or long (`Fn::Sub: x`) form.
pub fn intrinsic<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Tagged(t) if t.tag == name => Some(&t.value),
        Value::Mapping(m) if m.len() == 1 => {
            let long = if name == "Ref" {
                "Ref".to_owned()
            } else {
                format!("Fn::{name}")
            };
            m.get(long.as_str())
        }
        _ => None,
    }
}

/// The logical id (or parameter) of `!Ref X`.
pub fn ref_of(v: &Value) -> Option<&str> {
    intrinsic(v, "Ref")?.as_str()
}

/// `!GetAtt X.Attr` or `[X, Attr]`.
pub fn getatt_of(v: &Value) -> Option<(String, String)> {
    match intrinsic(v, "GetAtt")? {
        Value::String(s) => {
            let (id, attr) = s.split_once('.')?;
            Some((id.to_owned(), attr.to_owned()))
        }
        Value::Sequence(seq) => Some((seq.first()?.as_str()?.to_owned(), seq.get(1)?.as_str()?.to_owned())),
        _ => None,
    }
}

/// The string of `!Sub "…"` (or of `!Sub ["…", {…}]`).
pub fn sub_of(v: &Value) -> Option<&str> {
    match intrinsic(v, "Sub")? {
        Value::String(s) => Some(s),
        Value::Sequence(seq) => seq.first()?.as_str(),
        _ => None,
    }
}

/// `${Name}` and `${Name.Attr}` in a `!Sub` string, without pseudo parameters.
fn sub_refs(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find('}') else { break };
        let name = rest[..end].split('.').next().unwrap_or_default();
        if !name.is_empty() && !name.starts_with('!') && !name.contains("::") {
            out.push(name.to_owned());
        }
        rest = &rest[end..];
    }
    out
}

/// Every logical id (or parameter) `v` refers to: `!Ref X`, `!GetAtt X.Arn`, `${X}` and
/// `${X.Arn}` in `!Sub`, at any depth.
pub fn references(v: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        if let Some(name) = ref_of(v) {
            out.insert(name.to_owned());
        } else if let Some((id, _)) = getatt_of(v) {
            out.insert(id);
        } else if let Some(s) = sub_of(v) {
            out.extend(sub_refs(s));
            if let Some(Value::Sequence(seq)) = intrinsic(v, "Sub") {
                seq.iter().skip(1).for_each(|x| walk(x, out));
            }
        } else {
            match v {
                Value::Tagged(t) => walk(&t.value, out),
                Value::Mapping(m) => m.values().for_each(|x| walk(x, out)),
                Value::Sequence(seq) => seq.iter().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut out);
    out
}

/// A string, or a one-element list of one, as in `Actions: x` / `Actions: [x]`.
pub fn strings(v: Option<&Value>) -> Vec<&Value> {
    match v {
        Some(Value::Sequence(seq)) => seq.iter().collect(),
        Some(other) => vec![other],
        None => vec![],
    }
}

/// The template, parsed as YAML.
#[derive(Clone, Copy)]
pub struct Document<'a> {
    pub root: &'a Value,
}

/// An `AWS::Serverless::Function` resource.
pub struct FunctionResource<'a> {
    pub id: &'a str,
    /// `Metadata.BuildProperties.Binary`.
    pub binary: Option<&'a str>,
    pub resource: &'a Value,
}

impl<'a> Document<'a> {
    pub fn new(root: &'a Value) -> Self {
        Document { root }
    }

    pub fn resources(&self) -> impl Iterator<Item = (&'a str, &'a Value)> {
        get(self.root, &["Resources"])
            .and_then(Value::as_mapping)
            .into_iter()
            .flat_map(Mapping::iter)
            .filter_map(|(k, v)| Some((k.as_str()?, v)))
    }

    pub fn of_type(&self, ty: &str) -> Vec<(&'a str, &'a Value)> {
        self.resources()
            .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(ty))
            .collect()
    }

    pub fn resource(&self, id: &str) -> Option<&'a Value> {
        get(self.root, &["Resources", id])
    }

    /// A parameter's `Default`, as text.
    pub fn parameter_default(&self, name: &str) -> Option<String> {
        scalar(get(self.root, &["Parameters", name, "Default"]))
    }

    /// A scalar, or the default of the parameter it is `!Ref` to.
    pub fn resolve(&self, v: Option<&Value>) -> Option<String> {
        scalar(v).or_else(|| self.parameter_default(ref_of(v?)?))
    }

    pub fn functions(&self) -> Vec<FunctionResource<'a>> {
        self.of_type("AWS::Serverless::Function")
            .into_iter()
            .map(|(id, r)| FunctionResource {
                id,
                binary: get(r, &["Metadata", "BuildProperties", "Binary"]).and_then(Value::as_str),
                resource: r,
            })
            .collect()
    }

    /// The one function that builds `binary`.
    pub fn function(&self, binary: &str) -> Option<FunctionResource<'a>> {
        self.functions().into_iter().find(|f| f.binary == Some(binary))
    }

    /// The binary of the function with logical id `id`.
    pub fn binary_of(&self, id: &str) -> Option<&'a str> {
        self.functions().into_iter().find(|f| f.id == id).and_then(|f| f.binary)
    }

    /// A function's property, or the one it inherits from `Globals.Function`.
    pub fn function_property(&self, f: &FunctionResource<'a>, name: &str) -> Option<&'a Value> {
        self.function_setting(f, &[name])
    }

    /// Nested property of a function with `Globals.Function` merged in (SAM merges maps).
    pub fn function_setting(&self, f: &FunctionResource<'a>, path: &[&str]) -> Option<&'a Value> {
        let mut own = vec!["Properties"];
        own.extend_from_slice(path);
        let mut global = vec!["Globals", "Function"];
        global.extend_from_slice(path);
        get(f.resource, &own).or_else(|| get(self.root, &global))
    }

    /// Every environment variable a function gets, from Globals and its own Environment.
    pub fn environment(&self, f: &FunctionResource<'a>) -> BTreeMap<String, &'a Value> {
        [
            get(self.root, &["Globals", "Function", "Environment", "Variables"]),
            get(f.resource, &["Properties", "Environment", "Variables"]),
        ]
        .into_iter()
        .flatten()
        .filter_map(Value::as_mapping)
        .flat_map(Mapping::iter)
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v)))
        .collect()
    }

    /// The IAM statements of a function's inline policies.
    pub fn statements(&self, f: &FunctionResource<'a>) -> Vec<&'a Value> {
        strings(get(f.resource, &["Properties", "Policies"]))
            .into_iter()
            .flat_map(|policy| strings(policy.get("Statement")))
            .collect()
    }

    pub fn api(&self) -> Option<(&'a str, &'a Value)> {
        self.of_type("AWS::ApiGatewayV2::Api").into_iter().next()
    }

    pub fn stage(&self) -> Option<(&'a str, &'a Value)> {
        self.of_type("AWS::ApiGatewayV2::Stage").into_iter().next()
    }

    /// How the stage name appears in `!Sub` strings: `${Param}` when it is a parameter.
    pub fn stage_segment(&self) -> Option<String> {
        let name = get(self.stage()?.1, &["Properties", "StageName"])?;
        match (ref_of(name), name.as_str()) {
            (Some(param), _) => Some(format!("${{{param}}}")),
            (None, Some(literal)) => Some(literal.to_owned()),
            _ => None,
        }
    }

    /// Lambda permissions that let API Gateway invoke `function_id`, by their SourceArn.
    pub fn apigateway_permissions(&self, function_id: &str) -> Vec<&'a str> {
        self.of_type("AWS::Lambda::Permission")
            .into_iter()
            .filter(|(_, p)| {
                let props = p.get("Properties");
                let invokes = props
                    .and_then(|p| p.get("FunctionName"))
                    .map(references)
                    .is_some_and(|r| r.contains(function_id));
                let principal = props.and_then(|p| p.get("Principal")).and_then(Value::as_str);
                invokes && principal == Some("apigateway.amazonaws.com")
            })
            .filter_map(|(_, p)| get(p, &["Properties", "SourceArn"]).and_then(sub_of))
            .collect()
    }

    /// Event source mappings into the function that builds `binary`.
    pub fn mappings_into(&self, binary: &str) -> Vec<&'a Value> {
        self.of_type("AWS::Lambda::EventSourceMapping")
            .into_iter()
            .filter(|(_, m)| {
                get(m, &["Properties", "FunctionName"])
                    .map(references)
                    .is_some_and(|refs| refs.iter().any(|id| self.binary_of(id) == Some(binary)))
            })
            .map(|(_, m)| m)
            .collect()
    }
}
