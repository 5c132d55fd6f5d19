//! The partition plan: which resource a key belongs to. Live and history
//! rows are partitioned by resource (issue 6 adds the DDL per dialect and
//! the `partitions` subcommand); this crate holds the rule that maps keys
//! to resources, with no database or gRPC code.
//!
//! Kubernetes stores objects at `/registry/<resource>/…` (core and most
//! built-in groups) or `/registry/<group>/<resource>/…` (custom resources
//! and aggregated APIs; a group name always contains a dot).

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
}
