//! The partition plan: which resource a key belongs to, which partition
//! (`part`) its rows live in, and the DDL that creates partitions per
//! dialect. No database or gRPC code: the adapter runs what this returns.
//!
//! Kubernetes stores objects at `/registry/<resource>/…` (core and most
//! built-in groups) or `/registry/<group>/<resource>/…` (custom resources
//! and aggregated APIs; a group name always contains a dot).
//!
//! Rows carry a `part` column: `''` for the default partition, or the
//! identifier of a resource listed in `etcdsql_partition`. A listed
//! resource is first `Moving` (new rows go to its partition, old ones are
//! still being moved out of the default), then `Ready`. The database's
//! native partitioning is by `part`, so adding a partition never moves rows
//! inside one DDL statement; etcdsql moves them in small transactions.

use std::collections::BTreeMap;

pub mod ddl;

const REGISTRY: &[u8] = b"/registry/";

/// The resource part of a Kubernetes key: `pods` for
/// `/registry/pods/default/web-0`, `stable.example.com/crontabs` for
/// `/registry/stable.example.com/crontabs/default/c1`. `None` for keys
/// outside `/registry/` or without a resource segment.
pub fn resource_of(key: &[u8]) -> Option<&[u8]> {
    let rest = key.strip_prefix(REGISTRY)?;
    let first_end = rest.iter().position(|&b| b == b'/')?;
    let first = &rest[..first_end];
    if first.is_empty() {
        return None;
    }
    if !first.contains(&b'.') {
        return Some(first);
    }
    let after = &rest[first_end + 1..];
    let second_end = after.iter().position(|&b| b == b'/')?;
    if second_end == 0 {
        return None;
    }
    Some(&rest[..first_end + 1 + second_end])
}

/// `/registry/<resource>/`: every key of the resource starts with it.
pub fn prefix_of(resource: &str) -> Vec<u8> {
    prefix_of_bytes(resource.as_bytes())
}

fn prefix_of_bytes(resource: &[u8]) -> Vec<u8> {
    let mut p = REGISTRY.to_vec();
    p.extend_from_slice(resource);
    p.push(b'/');
    p
}

/// The smallest key after every key starting with `prefix` (etcd's prefix
/// range end); `None` when there is none (all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Whether `resource` is a resource name `resource_of` can return.
pub fn valid_resource(resource: &str) -> bool {
    let mut probe = prefix_of(resource);
    probe.push(b'x');
    resource_of(&probe) == Some(resource.as_bytes()) && !resource.ends_with('/')
}

/// The partition identifier for a resource: lower-case letters, digits and
/// `_`, at most 24 characters (PostgreSQL names partitions
/// `etcdsql_history_e<epoch>_<part>` within its 63), unique among `taken`.
pub fn part_ident(resource: &str, taken: &dyn Fn(&str) -> bool) -> String {
    let mut base: String = resource
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    base.truncate(24);
    if !taken(&base) && !base.is_empty() {
        return base;
    }
    base.truncate(18);
    (2..)
        .map(|n| format!("{base}_{n}"))
        .find(|c| !taken(c))
        .expect("an unused identifier")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// New rows go to the resource's partition; old rows may still be in
    /// the default partition.
    Moving,
    /// Every row of the resource is in its partition.
    Ready,
}

impl State {
    pub fn from_code(code: i64) -> State {
        if code == 1 {
            State::Ready
        } else {
            State::Moving
        }
    }

    pub fn code(self) -> i64 {
        match self {
            State::Moving => 0,
            State::Ready => 1,
        }
    }
}

/// The listed resources as one process last read them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    /// `etcdsql_meta.partitions_version` this was read at.
    pub version: i64,
    /// resource → (part, state)
    pub resources: BTreeMap<String, (String, State)>,
}

impl Registry {
    fn lookup(&self, key: &[u8]) -> Option<&(String, State)> {
        let r = std::str::from_utf8(resource_of(key)?).ok()?;
        self.resources.get(r)
    }

    /// The part a new row of `key` is written to.
    pub fn target(&self, key: &[u8]) -> &str {
        self.lookup(key).map_or("", |(p, _)| p.as_str())
    }

    /// Whether rows of `key` may still be in the default partition while
    /// their resource has its own.
    pub fn moving(&self, key: &[u8]) -> bool {
        self.lookup(key).is_some_and(|(_, s)| *s == State::Moving)
    }

    /// The parts that can hold rows of keys in `[key, end)` (`end` `None`:
    /// exactly `key`; empty: every key from `key` on); `None` when that
    /// takes every partition.
    pub fn parts_for(&self, key: &[u8], end: Option<&[u8]>) -> Option<Vec<String>> {
        if self.resources.is_empty() {
            return Some(vec![String::new()]);
        }
        let within = |resource: &[u8]| {
            let prefix = prefix_of_bytes(resource);
            match end {
                None => true,
                Some([]) => false,
                Some(end) => {
                    key.starts_with(&prefix)
                        && prefix_end(&prefix).is_some_and(|pe| end <= pe.as_slice())
                }
            }
        };
        let resource = resource_of(key)?;
        if !within(resource) {
            return None;
        }
        Some(match self.lookup(key) {
            None => vec![String::new()],
            Some((p, State::Ready)) => vec![p.clone()],
            Some((p, State::Moving)) => vec![p.clone(), String::new()],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(key: &str) -> Option<&str> {
        resource_of(key.as_bytes()).map(|b| std::str::from_utf8(b).unwrap())
    }

    #[test]
    fn resources_of_keys() {
        assert_eq!(r("/registry/pods/default/web-0"), Some("pods"));
        assert_eq!(r("/registry/namespaces/kube-system"), Some("namespaces"));
        assert_eq!(r("/registry/deployments/ns/d"), Some("deployments"));
        assert_eq!(
            r("/registry/stable.example.com/crontabs/ns/c1"),
            Some("stable.example.com/crontabs")
        );
        assert_eq!(
            r(
                "/registry/apiextensions.k8s.io/customresourcedefinitions/crontabs.stable.example.com"
            ),
            Some("apiextensions.k8s.io/customresourcedefinitions")
        );
        assert_eq!(r("/registry/health"), None);
        assert_eq!(r("/registry//x"), None);
        assert_eq!(r("/registry/a.b//x"), None);
        assert_eq!(r("compact_rev_key"), None);
    }

    fn registry() -> Registry {
        let mut r = Registry::default();
        r.resources
            .insert("pods".into(), ("pods".into(), State::Ready));
        r.resources
            .insert("events".into(), ("events".into(), State::Moving));
        r
    }

    #[test]
    fn parts_of_ranges() {
        let r = registry();
        let pods = prefix_of("pods");
        let pods_end = prefix_end(&pods).unwrap();
        assert_eq!(
            r.parts_for(&pods, Some(&pods_end)),
            Some(vec!["pods".into()])
        );
        assert_eq!(
            r.parts_for(b"/registry/pods/ns/a", None),
            Some(vec!["pods".into()])
        );
        assert_eq!(
            r.parts_for(b"/registry/events/ns/e", None),
            Some(vec!["events".into(), String::new()])
        );
        assert_eq!(
            r.parts_for(b"/registry/secrets/ns/s", None),
            Some(vec![String::new()])
        );
        // Spanning resources, or open-ended: every partition.
        assert_eq!(r.parts_for(b"/registry/", Some(b"/registry0")), None);
        assert_eq!(r.parts_for(&pods, Some(b"")), None);
        assert_eq!(r.parts_for(b"other", None), None);
        assert_eq!(
            Registry::default().parts_for(b"x", Some(b"")),
            Some(vec![String::new()])
        );
        assert_eq!(r.target(b"/registry/pods/a/b"), "pods");
        assert_eq!(r.target(b"/registry/configmaps/a/b"), "");
        assert!(r.moving(b"/registry/events/a/b") && !r.moving(b"/registry/pods/a/b"));
    }

    #[test]
    fn identifiers_are_safe_and_unique() {
        assert_eq!(part_ident("pods", &|_| false), "pods");
        assert_eq!(
            part_ident("stable.example.com/crontabs", &|_| false),
            "stable_example_com_cront"
        );
        assert_eq!(part_ident("pods", &|p| p == "pods"), "pods_2");
        let long = "a".repeat(100);
        assert!(part_ident(&long, &|_| false).len() <= 24);
        assert!(valid_resource("pods") && valid_resource("example.com/widgets"));
        assert!(!valid_resource("example.com") && !valid_resource("") && !valid_resource("a/b"));
        assert_eq!(
            prefix_end(b"/registry/pods/").unwrap(),
            b"/registry/pods0".to_vec()
        );
    }
}
