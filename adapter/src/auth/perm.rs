//! Key permissions as etcd checks them (server/auth/range_perm_cache.go):
//! every permission is a half-open interval of keys, a one-key permission
//! the interval `[key, key\0)`, a `range_end` of `"\0"` the interval from
//! `key` to the end. A single key is permitted if some interval holds it;
//! a range only if the intervals together cover all of it.

use crate::proto::authpb::Role;
use crate::proto::authpb::permission::Type;

/// `[start, end)`; `None`: to the end of the keyspace.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => {
                let mut e = key.to_vec();
                e.push(0);
                Some(e)
            }
            [0] => None,
            e => Some(e.to_vec()),
        };
        Interval {
            start: key.to_vec(),
            end,
        }
    }

    fn holds(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && self.end.as_deref().is_none_or(|e| key < e)
    }
}

/// The read and write intervals a user's roles grant.
#[derive(Debug, Default)]
pub struct Permissions {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

impl Permissions {
    pub fn of<'a>(roles: impl IntoIterator<Item = &'a Role>) -> Permissions {
        let mut p = Permissions::default();
        for role in roles {
            for perm in &role.key_permission {
                let ivl = Interval::of(&perm.key, &perm.range_end);
                let t = Type::try_from(perm.perm_type).unwrap_or(Type::Read);
                if matches!(t, Type::Read | Type::Readwrite) {
                    p.read.push(ivl.clone());
                }
                if matches!(t, Type::Write | Type::Readwrite) {
                    p.write.push(ivl);
                }
            }
        }
        p.read.sort_by(|a, b| a.start.cmp(&b.start));
        p.write.sort_by(|a, b| a.start.cmp(&b.start));
        p
    }

    /// Whether `[key, range_end)` (a single key when `range_end` is empty)
    /// may be read, or written with `write`.
    pub fn permits(&self, key: &[u8], range_end: &[u8], write: bool) -> bool {
        let granted = if write { &self.write } else { &self.read };
        if range_end.is_empty() {
            return granted.iter().any(|i| i.holds(key));
        }
        let want = Interval::of(key, range_end);
        // Sweep from the start: each step extends what is covered by the
        // interval that starts within it and reaches furthest.
        let mut covered = want.start.clone();
        loop {
            if let Some(end) = &want.end
                && covered >= *end
            {
                return true;
            }
            let mut furthest: Option<&Option<Vec<u8>>> = None;
            for i in granted {
                if i.start > covered {
                    break;
                }
                if !i.holds(&covered) {
                    continue;
                }
                furthest = Some(match furthest {
                    None => &i.end,
                    Some(f) => match (f, &i.end) {
                        (None, _) | (_, None) => &None,
                        (Some(a), Some(b)) => {
                            if b > a {
                                &i.end
                            } else {
                                f
                            }
                        }
                    },
                });
            }
            match furthest {
                None => return false,
                Some(None) => return true,
                Some(Some(e)) => covered = e.clone(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::authpb::Permission;

    fn role(perms: &[(Type, &str, &str)]) -> Role {
        Role {
            name: b"r".to_vec(),
            key_permission: perms
                .iter()
                .map(|(t, k, e)| Permission {
                    perm_type: *t as i32,
                    key: k.as_bytes().to_vec(),
                    range_end: e.as_bytes().to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn ranges_are_permitted_only_when_covered() {
        let r = role(&[
            (Type::Read, "a", "c"),
            (Type::Readwrite, "c", "e"),
            (Type::Write, "x", ""),
            (Type::Read, "z", "\0"),
        ]);
        let p = Permissions::of([&r]);
        assert!(p.permits(b"a", b"", false));
        assert!(p.permits(b"b", b"", false));
        assert!(
            p.permits(b"a", b"e", false),
            "two adjacent intervals cover it"
        );
        assert!(!p.permits(b"a", b"f", false));
        assert!(!p.permits(b"a", b"c", true));
        assert!(p.permits(b"c", b"e", true));
        assert!(p.permits(b"x", b"", true));
        assert!(!p.permits(b"x", b"", false));
        assert!(
            !p.permits(b"xa", b"", true),
            "a one-key permission is that key"
        );
        assert!(p.permits(b"x", b"x\0", true));
        assert!(p.permits(b"z", b"\0", false), "from z to the end");
        assert!(p.permits(b"zzz", b"", false));
        assert!(!p.permits(b"y", b"\0", false));
        assert!(!p.permits(b"", b"\0", false));
    }
}
