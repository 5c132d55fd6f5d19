//! Label and field selectors, pushed down to SQL.
//!
//! The HariKube-patched kube-apiserver sends Kubernetes selector strings in
//! `RangeRequest` 14/15 and `WatchCreateRequest` 9/10; plain etcd clients
//! never do. Labels and selectable fields are extracted from each object
//! when it is written ([`extract`]) and stored as JSON beside it (columns
//! `labels` and `fields`), so a Range's selector becomes a `WHERE` clause
//! (in the backend's `sql` module) and the count, `limit` and `more` are those of
//! the matching objects. A watch filters events in memory with the same
//! semantics: an event is delivered when the old or the new object matches.
//!
//! - [`labels`]: the label selector grammar and `Requirement.Matches`;
//! - [`fields`]: the field selector grammar;
//! - [`extract`]: labels and fields from JSON and protobuf objects, built-in
//!   field sets, CRD `selectableFields`.
//!
//! A value etcdsql cannot read as a Kubernetes object (encrypted at rest,
//! or not an object) has no labels or fields stored (NULL) and matches every
//! selector: kube-apiserver filters what it decodes again, so it sees the
//! right answer, with such objects counted.

pub mod extract;
pub mod fields;
pub mod labels;

pub use extract::{Catalog, Object};
pub use fields::FieldReq;
pub use labels::{LabelOp, LabelReq};

use crate::proto::mvccpb::KeyValue;

/// A parsed selector pair; both empty never reaches SQL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub labels: Vec<LabelReq>,
    pub fields: Vec<FieldReq>,
    /// `etcdsql_label` may still hold rows hashed as before schema version
    /// 8: candidates are looked for under both hashes.
    pub legacy_hashes: bool,
}

impl Selector {
    /// Parses the two selector strings of a request whose keys are
    /// `[key, range_end)`. `None` when both are empty. Errors name the
    /// problem, in Kubernetes' words.
    pub fn parse(
        label: &str,
        field: &str,
        key: &[u8],
        range_end: &[u8],
        catalog: &Catalog,
    ) -> Result<Option<Selector>, String> {
        let labels =
            labels::parse(label).map_err(|e| format!("invalid label selector {label:?}: {e}"))?;
        let fields =
            fields::parse(field).map_err(|e| format!("invalid field selector {field:?}: {e}"))?;
        let resource = range_resource(key, range_end);
        for f in &fields {
            if !catalog.supports(resource.as_deref(), &f.field) {
                return Err(format!(
                    "field label not supported: {}{}",
                    f.field,
                    resource
                        .as_deref()
                        .map(|r| format!(" (resource {r})"))
                        .unwrap_or_default()
                ));
            }
        }
        Ok(
            (!labels.is_empty() || !fields.is_empty()).then(|| Selector {
                labels,
                fields,
                legacy_hashes: catalog.legacy_hashes(),
            }),
        )
    }

    /// Whether an object matches; `None` (unreadable) always does.
    pub fn matches(&self, obj: Option<&Object>) -> bool {
        let Some(o) = obj else { return true };
        self.labels
            .iter()
            .all(|r| r.matches(o.labels.get(&r.key).map(String::as_str)))
            && self
                .fields
                .iter()
                .all(|r| r.matches(o.fields.get(&r.field).map(String::as_str)))
    }

    /// Whether a watcher gets this event: the new object (a put) or the
    /// one it replaced matches.
    /// `new` is None for a delete.
    pub fn matches_event(
        &self,
        new: Option<&KeyValue>,
        old: Option<&KeyValue>,
        catalog: &Catalog,
    ) -> bool {
        let new = new.map(|kv| catalog.extract(&kv.key, &kv.value));
        let old = old.map(|p| catalog.extract(&p.key, &p.value));
        new.iter()
            .chain(old.iter())
            .any(|o| self.matches(o.as_ref()))
    }
}

/// Rows of `etcdsql_label` (MySQL, SQLite): hashes of what positive
/// selector terms look for. FNV-1a 64 over a tag, the name and the value:
/// the same in every process; how it is stored changed at schema version
/// 8 ([`hash::Hash`]). A collision only adds a candidate; the JSON columns
/// decide.
pub mod hash {
    /// A value that is not a readable Kubernetes object: a candidate for
    /// every selector.
    pub const OPAQUE: i64 = 0;

    /// The one value schema versions before 8 stored for every hash with
    /// its top bit set (half of them: nearly every object had such a row,
    /// so a term hashed there narrowed nothing). Stored hashes are above it.
    pub const LEGACY_BUCKET: i64 = 1;

    /// The rows of `etcdsql_label` a live key holds, given its value's
    /// hashes (`None`: not a readable object, one [`OPAQUE`] row). A key
    /// outside `/registry/<resource>/` holds none: no selector range
    /// reaches it ([`super::range_resource`]).
    pub fn rows<'a>(key: &[u8], hashes: Option<&'a [i64]>) -> &'a [i64] {
        if etcdsql_partitions::resource_of(key).is_none() {
            return &[];
        }
        hashes.unwrap_or(&[OPAQUE])
    }

    /// A hash as FNV-1a 64 gives it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Hash(u64);

    impl Hash {
        /// As stored from schema version 8 on: its top 63 bits, above
        /// [`OPAQUE`] and [`LEGACY_BUCKET`].
        pub fn stored(self) -> i64 {
            i64::try_from(self.0 >> 1).unwrap_or(i64::MAX).max(2)
        }

        /// As schema versions before 8 stored it.
        pub fn legacy(self) -> i64 {
            i64::from_ne_bytes(self.0.to_ne_bytes()).max(LEGACY_BUCKET)
        }
    }

    fn fnv(parts: &[&[u8]]) -> Hash {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                // A separator no label key or field name holds.
                h ^= 0xff;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            for b in *p {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        Hash(h)
    }

    /// Label `key` with `value`.
    pub fn label(key: &str, value: &str) -> Hash {
        fnv(&[b"l", key.as_bytes(), value.as_bytes()])
    }

    /// Field `name` with `value`.
    pub fn field(name: &str, value: &str) -> Hash {
        fnv(&[b"f", name.as_bytes(), value.as_bytes()])
    }

    /// Every hash of an object (`None`: unreadable): each label with its
    /// value, and each field with a value. Left out, as the terms they
    /// would serve are rare next to the rows they cost on every write (a
    /// term without rows is answered from the key range and the JSON
    /// columns): a label's presence (`key`, `>`, `<`), fields whose value
    /// is empty (`spec.nodeName=`), and `metadata.*` fields (the key range
    /// already narrows by namespace and name).
    pub fn of(obj: Option<&super::Object>) -> Vec<i64> {
        let Some(o) = obj else {
            return vec![OPAQUE];
        };
        let mut out = Vec::with_capacity(o.labels.len() + o.fields.len());
        for (k, v) in &o.labels {
            out.push(label(k, v).stored());
        }
        for (f, v) in &o.fields {
            if !v.is_empty() && !f.starts_with("metadata.") {
                out.push(field(f, v).stored());
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The resource every key of `[key, range_end)` belongs to, if one does:
/// the range lies within `/registry/<resource>/`.
pub fn range_resource(key: &[u8], range_end: &[u8]) -> Option<String> {
    let resource = etcdsql_partitions::resource_of(key)?;
    let prefix = etcdsql_partitions::prefix_of(std::str::from_utf8(resource).ok()?);
    let end = etcdsql_partitions::prefix_end(&prefix)?;
    let inside = match range_end {
        [] => true,
        [0] => false,
        e => e <= end.as_slice(),
    };
    (inside && key.starts_with(&prefix)).then(|| String::from_utf8_lossy(resource).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_within_one_resource_has_its_fields() {
        let c = Catalog::default();
        let p = |l: &str, f: &str, k: &[u8], e: &[u8]| Selector::parse(l, f, k, e, &c);
        assert_eq!(p("", "", b"/registry/pods/", b"/registry/pods0"), Ok(None));
        assert!(
            p(
                "",
                "spec.nodeName=n1",
                b"/registry/pods/",
                b"/registry/pods0"
            )
            .is_ok()
        );
        assert!(
            p(
                "",
                "spec.nodeName=n1",
                b"/registry/pods/ns/",
                b"/registry/pods/ns0"
            )
            .is_ok()
        );
        let err = p("", "spec.nodeName=n1", b"/registry/", b"/registry0").unwrap_err();
        assert!(
            err.contains("field label not supported: spec.nodeName"),
            "{err}"
        );
        assert!(p("", "metadata.name=a", b"/registry/", b"/registry0").is_ok());
        let err = p("", "spec.nope=a", b"/registry/pods/", b"/registry/pods0").unwrap_err();
        assert!(err.contains("(resource pods)"), "{err}");
        let err = p("a in b", "", b"/registry/pods/", b"/registry/pods0").unwrap_err();
        assert!(
            err.starts_with("invalid label selector \"a in b\""),
            "{err}"
        );
    }

    #[test]
    fn label_rows_only_where_a_selector_range_reaches() {
        let h = [7, 9];
        for key in [
            b"/registry/pods/ns/a".as_slice(),
            b"/registry/example.com/widgets/ns/w",
        ] {
            assert_eq!(hash::rows(key, Some(&h)), &h);
            assert_eq!(hash::rows(key, None), &[hash::OPAQUE]);
            let resource = std::str::from_utf8(etcdsql_partitions::resource_of(key).unwrap())
                .unwrap()
                .to_string();
            let end =
                etcdsql_partitions::prefix_end(&etcdsql_partitions::prefix_of(&resource)).unwrap();
            assert_eq!(
                range_resource(&etcdsql_partitions::prefix_of(&resource), &end),
                Some(resource)
            );
        }
        for key in [
            b"foo/bar".as_slice(),
            b"/registry/pods",
            b"/registry/example.com/widgets",
            b"/registry//a",
        ] {
            assert!(hash::rows(key, Some(&h)).is_empty(), "{key:?}");
            assert!(hash::rows(key, None).is_empty(), "{key:?}");
            // No selector range holds it.
            assert_eq!(range_resource(key, &[]), None, "{key:?}");
        }
    }

    #[test]
    fn stored_hashes_spread_over_63_bits() {
        let stored: Vec<i64> = (0..4096)
            .map(|i| hash::label("app", &format!("v{i}")).stored())
            .collect();
        assert!(stored.iter().all(|h| *h > hash::LEGACY_BUCKET));
        // Before version 8 about half fell into the one bucket.
        let legacy = (0..4096)
            .filter(|i| hash::label("app", &format!("v{i}")).legacy() == hash::LEGACY_BUCKET)
            .count();
        assert!(legacy > 1500, "{legacy} of 4096 in the legacy bucket");
        let mut distinct = stored.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), stored.len());
        // Both halves of the range are used.
        assert!(stored.iter().any(|h| *h > i64::MAX / 2));
        assert!(stored.iter().any(|h| *h < i64::MAX / 2));
    }

    #[test]
    fn crd_selectable_fields_are_learned_from_the_crd() {
        let c = Catalog::default();
        let crd = br#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
            "metadata":{"name":"widgets.example.com"},
            "spec":{"group":"example.com","names":{"plural":"widgets"},"versions":[
              {"name":"v1beta1","storage":false,"selectableFields":[{"jsonPath":".spec.old"}]},
              {"name":"v1","storage":true,"selectableFields":[{"jsonPath":".spec.color"},{"jsonPath":".spec.size"}]}]}}"#;
        let key = b"/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com";
        c.observe(key, Some(crd));
        let (k, e) = (
            b"/registry/example.com/widgets/".as_slice(),
            b"/registry/example.com/widgets0".as_slice(),
        );
        assert!(Selector::parse("", "spec.color=red", k, e, &c).is_ok());
        assert!(
            Selector::parse("", "spec.old=x", k, e, &c).is_err(),
            "not the storage version"
        );
        let obj = c
            .extract(
                b"/registry/example.com/widgets/ns/w1",
                br#"{"metadata":{"name":"w1","namespace":"ns","labels":{"app":"x"}},"spec":{"color":"red","size":3}}"#,
            )
            .unwrap();
        assert_eq!(obj.fields["spec.color"], "red");
        assert_eq!(obj.fields["spec.size"], "3");
        assert_eq!(obj.labels["app"], "x");
        c.observe(key, None);
        assert!(
            Selector::parse("", "spec.color=red", k, e, &c).is_err(),
            "deleted"
        );
    }
}
