//! Labels and selectable fields of a stored Kubernetes object, read from
//! its bytes: JSON (custom resources, or built-ins stored with
//! `--storage-media-type=application/json`) or protobuf (`k8s\0` followed by
//! a `runtime.Unknown` whose `raw` is the object). Labels need no per-type
//! schema: `metadata` is field 1 of every top-level type and `labels` field
//! 11 of `ObjectMeta`. Fields follow Kubernetes' per-type field sets
//! ([`BUILTIN`]) and the `selectableFields` of CRDs ([`Catalog`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use serde_json::Value;

/// What a selector is evaluated against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Object {
    pub labels: BTreeMap<String, String>,
    pub fields: BTreeMap<String, String>,
}

impl Object {
    /// The JSON texts stored in the `labels` and `fields` columns.
    pub fn to_columns(&self) -> (String, String) {
        let json = |m: &BTreeMap<String, String>| {
            serde_json::to_string(m).unwrap_or_else(|_| "{}".to_string())
        };
        (json(&self.labels), json(&self.fields))
    }
}

/// How a field's value is rendered, as Kubernetes' field set functions do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    /// `strconv.FormatBool`; unset is "false".
    Bool,
    /// `strconv.Itoa`; unset is "0".
    Int,
}

/// One selectable field of a built-in type: where it is in protobuf (field
/// numbers from the top-level message; the first element of a repeated
/// field) and in JSON (`.`-separated names, a number indexes an array).
/// `or`: taken when this one is empty (events' `source`).
struct Def {
    name: &'static str,
    proto: &'static [u32],
    json: &'static str,
    kind: Kind,
    or: Option<(&'static [u32], &'static str)>,
}

const fn s(name: &'static str, proto: &'static [u32], json: &'static str) -> Def {
    Def {
        name,
        proto,
        json,
        kind: Kind::Str,
        or: None,
    }
}

const fn typed(name: &'static str, proto: &'static [u32], json: &'static str, kind: Kind) -> Def {
    Def {
        name,
        proto,
        json,
        kind,
        or: None,
    }
}

/// The field sets Kubernetes defines beyond `metadata.name` and
/// `metadata.namespace`, by the resource segment of the key
/// (`/registry/<resource>/…`; nodes are stored as `minions`, replication
/// controllers as `controllers`).
const BUILTIN: &[(&str, &[Def])] = &[
    (
        "pods",
        &[
            s("spec.nodeName", &[2, 10], "spec.nodeName"),
            s("spec.restartPolicy", &[2, 3], "spec.restartPolicy"),
            s("spec.schedulerName", &[2, 19], "spec.schedulerName"),
            Def {
                // The deprecated serviceAccount when empty, as conversion does.
                or: Some((&[2, 9], "spec.serviceAccount")),
                ..s(
                    "spec.serviceAccountName",
                    &[2, 8],
                    "spec.serviceAccountName",
                )
            },
            typed("spec.hostNetwork", &[2, 11], "spec.hostNetwork", Kind::Bool),
            s("status.phase", &[3, 1], "status.phase"),
            Def {
                or: Some((&[3, 12, 1], "status.podIPs.0.ip")),
                ..s("status.podIP", &[3, 6], "status.podIP")
            },
            s(
                "status.nominatedNodeName",
                &[3, 11],
                "status.nominatedNodeName",
            ),
        ],
    ),
    (
        "events",
        &[
            s("involvedObject.kind", &[2, 1], "involvedObject.kind"),
            s(
                "involvedObject.namespace",
                &[2, 2],
                "involvedObject.namespace",
            ),
            s("involvedObject.name", &[2, 3], "involvedObject.name"),
            s("involvedObject.uid", &[2, 4], "involvedObject.uid"),
            s(
                "involvedObject.apiVersion",
                &[2, 5],
                "involvedObject.apiVersion",
            ),
            s(
                "involvedObject.resourceVersion",
                &[2, 6],
                "involvedObject.resourceVersion",
            ),
            s(
                "involvedObject.fieldPath",
                &[2, 7],
                "involvedObject.fieldPath",
            ),
            s("reason", &[3], "reason"),
            s("reportingComponent", &[14], "reportingComponent"),
            Def {
                name: "source",
                proto: &[5, 1],
                json: "source.component",
                kind: Kind::Str,
                or: Some((&[14], "reportingComponent")),
            },
            s("type", &[9], "type"),
        ],
    ),
    ("secrets", &[s("type", &[3], "type")]),
    (
        "namespaces",
        &[
            s("status.phase", &[3, 1], "status.phase"),
            s("name", &[1, 1], "metadata.name"),
        ],
    ),
    ("persistentvolumes", &[s("name", &[1, 1], "metadata.name")]),
    (
        "persistentvolumeclaims",
        &[s("name", &[1, 1], "metadata.name")],
    ),
    (
        "services",
        &[
            s("spec.clusterIP", &[2, 3], "spec.clusterIP"),
            s("spec.type", &[2, 4], "spec.type"),
        ],
    ),
    (
        "minions",
        &[typed(
            "spec.unschedulable",
            &[2, 4],
            "spec.unschedulable",
            Kind::Bool,
        )],
    ),
    (
        "replicasets",
        &[typed(
            "status.replicas",
            &[3, 1],
            "status.replicas",
            Kind::Int,
        )],
    ),
    (
        "controllers",
        &[typed(
            "status.replicas",
            &[3, 1],
            "status.replicas",
            Kind::Int,
        )],
    ),
    (
        "jobs",
        &[typed(
            "status.successful",
            &[3, 5],
            "status.succeeded",
            Kind::Int,
        )],
    ),
    (
        "certificatesigningrequests",
        &[s("spec.signerName", &[2, 7], "spec.signerName")],
    ),
];

const METADATA_FIELDS: [&str; 2] = ["metadata.name", "metadata.namespace"];

fn builtin(resource: &str) -> &'static [Def] {
    BUILTIN
        .iter()
        .find(|(r, _)| *r == resource)
        .map_or(&[], |(_, d)| d)
}

pub const CRD_PREFIX: &[u8] = b"/registry/apiextensions.k8s.io/customresourcedefinitions/";

/// The selectable fields of custom resources, learned from the CRD objects
/// written through etcdsql (and read back at start), keyed by the
/// resource (`<group>/<plural>`). Values are JSON paths as segments.
#[derive(Default)]
pub struct Catalog {
    crds: RwLock<HashMap<String, Vec<String>>>,
    /// Resources whose selectable fields this process's writes changed:
    /// their stored objects need their `fields` read again.
    changed: std::sync::Mutex<Vec<String>>,
    /// Every live row has its `etcdsql_label` rows (rows from before schema
    /// version 3 were indexed): see [`Self::label_rows_complete`].
    rows_complete: std::sync::atomic::AtomicBool,
    /// Counts changes of `crds`: an extraction made at one generation holds
    /// while the generation is unchanged.
    generation: std::sync::atomic::AtomicU64,
    /// Set once this process saw `etcdsql_label` hold only rows hashed
    /// as from schema version 8 (see [`super::hash::Hash::legacy`]).
    hashes_current: std::sync::atomic::AtomicBool,
}

impl Catalog {
    /// Learns from a write: a CRD put (its storage version's
    /// `selectableFields`) or delete. Other keys are ignored.
    pub fn observe(&self, key: &[u8], value: Option<&[u8]>) {
        self.learn(key, value);
    }

    /// [`Self::observe`] for a write of this process: a CRD put that changes
    /// the selectable fields is remembered for [`Self::take_changed`].
    pub fn observe_write(&self, key: &[u8], value: Option<&[u8]>) {
        if let (Some(resource), Some(_)) = (self.learn(key, value), value) {
            let mut c = self.changed.lock().unwrap_or_else(|e| e.into_inner());
            if !c.contains(&resource) {
                c.push(resource);
            }
        }
    }

    /// Whether every live row's `etcdsql_label` rows are the hashes of its
    /// value, so that a write keeping them may leave them alone. False
    /// until this process saw the earlier rows indexed (a write to a row
    /// still unindexed must write its rows).
    pub fn label_rows_complete(&self) -> bool {
        self.rows_complete
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether selectors must look for legacy hashes too (until this process
    /// saw the table's rows hashed again).
    pub fn legacy_hashes(&self) -> bool {
        !self
            .hashes_current
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every `etcdsql_label` row is hashed as from schema version 8.
    pub fn set_hashes_current(&self) {
        self.hashes_current
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The rows from before schema version 3 are indexed.
    pub fn set_label_rows_complete(&self) {
        self.rows_complete
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The current generation: read it before an extraction, and that
    /// extraction is what [`Self::extract`] answers for as long as the
    /// generation stays the same.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether a write of `key` can change the catalog (a CRD).
    pub fn concerns(key: &[u8]) -> bool {
        key.starts_with(CRD_PREFIX)
    }

    /// Resources whose objects' fields are stale since the last call.
    pub fn take_changed(&self) -> Vec<String> {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Updates the CRD's entry; returns its resource if its fields changed.
    fn learn(&self, key: &[u8], value: Option<&[u8]>) -> Option<String> {
        let name = key.strip_prefix(CRD_PREFIX)?;
        let mut crds = self.crds.write().unwrap_or_else(|e| e.into_inner());
        // The key's name is `<plural>.<group>`.
        let resource = std::str::from_utf8(name)
            .ok()
            .and_then(|n| n.split_once('.'))
            .map(|(plural, group)| format!("{group}/{plural}"))?;
        let before = match value.map(crd_selectable_fields) {
            Some(paths) if !paths.is_empty() => crds.insert(resource.clone(), paths.clone()),
            _ => crds.remove(&resource),
        };
        let after = crds.get(&resource);
        let changed = before.as_ref() != after;
        if changed {
            // Under the write lock: whoever reads the new generation then
            // extracts with the new fields.
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        changed.then_some(resource)
    }

    fn custom(&self, resource: &str) -> Vec<String> {
        let crds = self.crds.read().unwrap_or_else(|e| e.into_inner());
        crds.get(resource).cloned().unwrap_or_default()
    }

    /// Whether `field` is selectable for objects of `resource` (`None`:
    /// a range that is not within one resource; only metadata then).
    pub fn supports(&self, resource: Option<&str>, field: &str) -> bool {
        if METADATA_FIELDS.contains(&field) {
            return true;
        }
        let Some(resource) = resource else {
            return false;
        };
        builtin(resource).iter().any(|d| d.name == field)
            || self.custom(resource).iter().any(|p| p == field)
    }

    /// Labels and fields of the object stored at `key`; `None` when the
    /// value is not a Kubernetes object etcdsql can read (encrypted at
    /// rest, or not an object at all).
    pub fn extract(&self, key: &[u8], value: &[u8]) -> Option<Object> {
        let resource = etcdsql_partitions::resource_of(key)
            .and_then(|r| std::str::from_utf8(r).ok())
            .unwrap_or("");
        if let Some(raw) = value.strip_prefix(b"k8s\0") {
            return from_proto(raw, builtin(resource));
        }
        if value.first() != Some(&b'{') {
            return None;
        }
        let v: Value = serde_json::from_slice(value).ok()?;
        let custom = if resource.contains('/') {
            self.custom(resource)
        } else {
            Vec::new()
        };
        from_json(&v, builtin(resource), &custom)
    }
}

// --- protobuf --------------------------------------------------------------

/// A field's payload.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Every field of a message, in order; `None` if the bytes are malformed.
fn message(b: &[u8]) -> Option<Vec<(u64, Wire<'_>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let tag = varint(b, &mut i)?;
        let w = match tag & 7 {
            0 => Wire::Varint(varint(b, &mut i)?),
            1 => {
                i = i.checked_add(8).filter(|&e| e <= b.len())?;
                Wire::Fixed
            }
            2 => {
                let n = usize::try_from(varint(b, &mut i)?).ok()?;
                let end = i.checked_add(n).filter(|&e| e <= b.len())?;
                let payload = &b[i..end];
                i = end;
                Wire::Bytes(payload)
            }
            5 => {
                i = i.checked_add(4).filter(|&e| e <= b.len())?;
                Wire::Fixed
            }
            _ => return None,
        };
        out.push((tag >> 3, w));
    }
    Some(out)
}

/// The first occurrence of field `num` (a repeated field's first element).
fn field<'a>(msg: &[(u64, Wire<'a>)], num: u32) -> Option<Wire<'a>> {
    msg.iter()
        .find(|(n, _)| *n == u64::from(num))
        .map(|(_, w)| *w)
}

fn proto_value(obj: &[(u64, Wire<'_>)], path: &[u32], kind: Kind) -> Option<String> {
    let (last, parents) = path.split_last()?;
    let mut owned;
    let mut msg = obj;
    for num in parents {
        let Some(Wire::Bytes(b)) = field(msg, *num) else {
            return None;
        };
        owned = message(b)?;
        msg = &owned;
    }
    match (field(msg, *last)?, kind) {
        (Wire::Bytes(b), Kind::Str) => Some(String::from_utf8_lossy(b).into_owned()),
        (Wire::Varint(v), Kind::Bool) => Some((v != 0).to_string()),
        // int32 and int64 are two's complement varints.
        (Wire::Varint(v), Kind::Int) => Some(i64::from_ne_bytes(v.to_ne_bytes()).to_string()),
        _ => None,
    }
}

fn default_of(kind: Kind) -> String {
    match kind {
        Kind::Str => String::new(),
        Kind::Bool => "false".into(),
        Kind::Int => "0".into(),
    }
}

fn from_proto(envelope: &[u8], defs: &[Def]) -> Option<Object> {
    // runtime.Unknown: typeMeta 1, raw 2, contentEncoding 3, contentType 4.
    let unknown = message(envelope)?;
    let Wire::Bytes(raw) = field(&unknown, 2)? else {
        return None;
    };
    let obj = message(raw)?;
    let mut out = Object::default();
    let meta = match field(&obj, 1) {
        Some(Wire::Bytes(b)) => message(b)?,
        _ => Vec::new(),
    };
    let text = |w: Option<Wire<'_>>| match w {
        Some(Wire::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    out.fields
        .insert("metadata.name".into(), text(field(&meta, 1)));
    out.fields
        .insert("metadata.namespace".into(), text(field(&meta, 3)));
    for (n, w) in &meta {
        if let (11, Wire::Bytes(entry)) = (n, w) {
            // map<string, string> entry: key 1, value 2; the last one wins.
            let e = message(entry)?;
            out.labels.insert(text(field(&e, 1)), text(field(&e, 2)));
        }
    }
    for d in defs {
        let mut v = proto_value(&obj, d.proto, d.kind);
        if v.as_deref().is_none_or(str::is_empty)
            && let Some((alt, _)) = d.or
        {
            v = proto_value(&obj, alt, d.kind).or(v);
        }
        out.fields
            .insert(d.name.into(), v.unwrap_or_else(|| default_of(d.kind)));
    }
    Some(out)
}

// --- JSON ------------------------------------------------------------------

fn json_at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => a.get(seg.parse::<usize>().ok()?),
        _ => None,
    })
}

/// A scalar as Kubernetes renders it in a field set.
fn json_scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn from_json(v: &Value, defs: &[Def], custom: &[String]) -> Option<Object> {
    let Value::Object(_) = v else {
        return None;
    };
    let mut out = Object::default();
    let text = |p: &str| json_at(v, p).and_then(json_scalar).unwrap_or_default();
    out.fields
        .insert("metadata.name".into(), text("metadata.name"));
    out.fields
        .insert("metadata.namespace".into(), text("metadata.namespace"));
    if let Some(Value::Object(labels)) = json_at(v, "metadata.labels") {
        for (k, l) in labels {
            if let Value::String(l) = l {
                out.labels.insert(k.clone(), l.clone());
            }
        }
    }
    for d in defs {
        let mut val = json_at(v, d.json).and_then(json_scalar);
        if val.as_deref().is_none_or(str::is_empty)
            && let Some((_, alt)) = d.or
        {
            val = json_at(v, alt).and_then(json_scalar).or(val);
        }
        out.fields
            .insert(d.name.into(), val.unwrap_or_else(|| default_of(d.kind)));
    }
    for path in custom {
        out.fields.insert(path.clone(), text(path));
    }
    Some(out)
}

/// The storage version's `selectableFields` of a CRD object (JSON or
/// protobuf), as paths without the leading dot.
fn crd_selectable_fields(value: &[u8]) -> Vec<String> {
    let paths = if let Some(raw) = value.strip_prefix(b"k8s\0") {
        crd_fields_proto(raw)
    } else {
        serde_json::from_slice::<Value>(value)
            .ok()
            .map(|v| crd_fields_json(&v))
    };
    paths
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.trim_start_matches('.').to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn crd_fields_json(v: &Value) -> Vec<String> {
    let Some(Value::Array(versions)) = json_at(v, "spec.versions") else {
        return Vec::new();
    };
    let storage = versions
        .iter()
        .find(|ver| ver.get("storage") == Some(&Value::Bool(true)));
    // Stored CRDs are v1beta1 JSON: fields every version shares are hoisted
    // to spec.selectableFields.
    let Some(Value::Array(fields)) = storage
        .and_then(|s| s.get("selectableFields"))
        .or_else(|| json_at(v, "spec.selectableFields"))
    else {
        return Vec::new();
    };
    fields
        .iter()
        .filter_map(|f| f.get("jsonPath").and_then(Value::as_str).map(String::from))
        .collect()
}

/// CustomResourceDefinition: spec 2; spec.versions 7; a version's storage
/// 3 and selectableFields 9; SelectableField.jsonPath 1. (Kubernetes stores
/// CRDs as JSON; protobuf is read for other writers.)
fn crd_fields_proto(envelope: &[u8]) -> Option<Vec<String>> {
    let unknown = message(envelope)?;
    let Wire::Bytes(raw) = field(&unknown, 2)? else {
        return None;
    };
    let obj = message(raw)?;
    let Wire::Bytes(spec) = field(&obj, 2)? else {
        return None;
    };
    for (n, w) in message(spec)? {
        let (7, Wire::Bytes(ver)) = (n, w) else {
            continue;
        };
        let ver = message(ver)?;
        if !matches!(field(&ver, 3), Some(Wire::Varint(1))) {
            continue;
        }
        let mut out = Vec::new();
        for (n, w) in &ver {
            if let (9, Wire::Bytes(sf)) = (n, w)
                && let Some(Wire::Bytes(p)) = field(&message(sf)?, 1)
            {
                out.push(String::from_utf8_lossy(p).into_owned());
            }
        }
        return Some(out);
    }
    Some(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_bytes(num: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [num << 3 | 2, u64::try_from(payload.len()).unwrap()] {
            let mut v = v;
            while v >= 0x80 {
                out.push(u8::try_from(v & 0x7f).unwrap() | 0x80);
                v >>= 7;
            }
            out.push(u8::try_from(v).unwrap());
        }
        out.extend_from_slice(payload);
        out
    }

    fn envelope(obj: &[u8]) -> Vec<u8> {
        let mut v = b"k8s\0".to_vec();
        v.extend(field_bytes(2, obj));
        v
    }

    #[test]
    fn event_source_falls_back_to_the_reporting_component() {
        let c = Catalog::default();
        let mut obj = field_bytes(1, &field_bytes(1, b"e1"));
        obj.extend(field_bytes(2, &field_bytes(3, b"web-0")));
        obj.extend(field_bytes(3, b"Scheduled"));
        obj.extend(field_bytes(14, b"kubelet"));
        let o = c
            .extract(b"/registry/events/default/e1", &envelope(&obj))
            .expect("an event");
        assert_eq!(o.fields["source"], "kubelet");
        assert_eq!(o.fields["involvedObject.name"], "web-0");
        assert_eq!(o.fields["reason"], "Scheduled");
        assert_eq!(o.fields["type"], "", "unset");
    }

    #[test]
    fn unreadable_values_have_no_columns() {
        let c = Catalog::default();
        for v in [
            b"k8s:enc:aescbc:v1:key1:...".as_slice(),
            b"k8s\0\x12\xff",
            b"[1, 2]",
            b"plain",
            b"",
        ] {
            assert_eq!(c.extract(b"/registry/pods/ns/a", v), None, "{v:?}");
        }
    }

    #[test]
    fn json_builtins_render_like_kubernetes() {
        let c = Catalog::default();
        let o = c
            .extract(
                b"/registry/minions/n1",
                br#"{"kind":"Node","metadata":{"name":"n1","labels":{"zone":"a"}},"spec":{}}"#,
            )
            .expect("a node");
        assert_eq!(o.fields["spec.unschedulable"], "false");
        assert_eq!(o.fields["metadata.name"], "n1");
        assert_eq!(o.labels["zone"], "a");
        let crd = br#"{"spec":{"group":"g.io","names":{"plural":"xs"},"selectableFields":[{"jsonPath":".spec.a"}],
            "versions":[{"name":"v1","storage":true}]}}"#;
        c.observe(
            b"/registry/apiextensions.k8s.io/customresourcedefinitions/xs.g.io",
            Some(crd),
        );
        assert!(
            c.supports(Some("g.io/xs"), "spec.a"),
            "v1beta1's hoisted list"
        );
    }
}
