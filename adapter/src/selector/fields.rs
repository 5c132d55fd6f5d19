//! Kubernetes field selectors (`k8s.io/apimachinery/pkg/fields`): terms
//! split on unescaped commas, `!=`, `==` or `=` found at the first position
//! where one starts, values unescaped (`\\`, `\,`, `\=`). Matching is exact;
//! a field the object lacks has the value "".

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldReq {
    pub field: String,
    /// `!=` when true.
    pub negated: bool,
    pub value: String,
}

impl FieldReq {
    pub fn matches(&self, value: Option<&str>) -> bool {
        (value.unwrap_or("") == self.value) != self.negated
    }
}

fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let (mut start, mut in_slash) = (0, false);
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

fn split_term(term: &str) -> Option<(&str, bool, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (op, negated) in [("!=", true), ("==", false), ("=", false)] {
            if let Some(rhs) = rest.strip_prefix(op) {
                return Some((&term[..i], negated, rhs));
            }
        }
    }
    None
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                _ => {
                    return Err(format!(
                        "invalid field selector: invalid escape sequence: \\{c}"
                    ));
                }
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => {
                // Go prints the rune as its code point.
                return Err(format!(
                    "invalid field selector: unescaped character in value: {}",
                    u32::from(c)
                ));
            }
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err("invalid field selector: invalid escape sequence: \\".into());
    }
    Ok(out)
}

/// A parsed field selector; empty matches everything.
pub fn parse(s: &str) -> Result<Vec<FieldReq>, String> {
    let mut terms = split_terms(s);
    terms.sort_unstable();
    let mut out = Vec::new();
    for term in terms {
        if term.is_empty() {
            continue;
        }
        let (field, negated, rhs) = split_term(term)
            .ok_or_else(|| format!("invalid selector: '{s}'; can't understand '{term}'"))?;
        out.push(FieldReq {
            field: field.to_string(),
            negated,
            value: unescape(rhs)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(field: &str, negated: bool, value: &str) -> FieldReq {
        FieldReq {
            field: field.into(),
            negated,
            value: value.into(),
        }
    }

    #[test]
    fn parses_terms() {
        assert_eq!(
            parse("spec.nodeName=n1,status.phase!=Running,metadata.name==a\\,b").unwrap(),
            vec![
                req("metadata.name", false, "a,b"),
                req("spec.nodeName", false, "n1"),
                req("status.phase", true, "Running"),
            ]
        );
        assert_eq!(parse("a=").unwrap(), vec![req("a", false, "")]);
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse(",").unwrap(), vec![]);
        // The first position where an operator starts wins: "a=!=b" is a = "!=b"?
        // No: at position 1 "=" matches, so the value "!=b" holds an unescaped '='.
        assert!(parse("a=!=b").is_err());
    }

    #[test]
    fn refuses_bad_terms() {
        for (s, want) in [
            ("a", "invalid selector: 'a'; can't understand 'a'"),
            ("a=b=c", "unescaped character in value: 61"),
            ("a=b\\x", "invalid escape sequence: \\x"),
            ("a=b\\", "invalid escape sequence: \\"),
        ] {
            let err = parse(s).expect_err(s);
            assert!(err.contains(want), "{s}: {err}");
        }
    }

    #[test]
    fn a_missing_field_is_empty() {
        assert!(req("f", false, "").matches(None));
        assert!(req("f", true, "x").matches(None));
        assert!(
            !req("f", false, "x").matches(Some("xy")),
            "never a substring"
        );
    }
}
