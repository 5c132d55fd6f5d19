//! Kubernetes label selectors (`k8s.io/apimachinery/pkg/labels`): the same
//! lexer, grammar, validation and error texts, so a selector kube-apiserver
//! accepts parses here to the same requirements, and one it refuses is
//! refused with the same reason.

use std::collections::BTreeSet;

/// A label requirement's operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelOp {
    /// `=`, `==` and `in`: present with one of the values.
    In(BTreeSet<String>),
    /// `!=` and `notin`: absent, or present with none of the values.
    NotIn(BTreeSet<String>),
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
    /// `key > n`: present with an integer value above n.
    Gt(i64),
    /// `key < n`
    Lt(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelReq {
    pub key: String,
    pub op: LabelOp,
}

impl LabelReq {
    /// Kubernetes' `Requirement.Matches`.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (LabelOp::In(vals), Some(v)) => vals.contains(v),
            (LabelOp::In(_) | LabelOp::Exists | LabelOp::Gt(_) | LabelOp::Lt(_), None) => false,
            (LabelOp::NotIn(_) | LabelOp::DoesNotExist, None) => true,
            (LabelOp::NotIn(vals), Some(v)) => !vals.contains(v),
            (LabelOp::Exists, Some(_)) => true,
            (LabelOp::DoesNotExist, Some(_)) => false,
            (LabelOp::Gt(n), Some(v)) => v.parse::<i64>().is_ok_and(|x| x > *n),
            (LabelOp::Lt(n), Some(v)) => v.parse::<i64>().is_ok_and(|x| x < *n),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Error,
    End,
    ClosePar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    Gt,
    Ident,
    In,
    Lt,
    NotEquals,
    NotIn,
    OpenPar,
}

fn symbol(s: &str) -> Option<Tok> {
    Some(match s {
        ")" => Tok::ClosePar,
        "," => Tok::Comma,
        "!" => Tok::DoesNotExist,
        "==" => Tok::DoubleEquals,
        "=" => Tok::Equals,
        ">" => Tok::Gt,
        "<" => Tok::Lt,
        "!=" => Tok::NotEquals,
        "(" => Tok::OpenPar,
        _ => return None,
    })
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(c: u8) -> bool {
    matches!(c, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// The whole input as tokens, ending with `End` (or an `Error`).
fn lex(s: &str) -> Vec<(Tok, String)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        // Go's lexer reads a NUL byte as the end of input.
        if i >= b.len() || b[i] == 0 {
            out.push((Tok::End, String::new()));
            return out;
        }
        if is_special(b[i]) {
            // Longest symbol: extend while the buffer still is one.
            let start = i;
            let mut last: Option<(Tok, usize)> = None;
            while i < b.len() && is_special(b[i]) {
                let buf = &s[start..=i];
                if let Some(t) = symbol(buf) {
                    last = Some((t, i + 1));
                } else if last.is_some() {
                    break;
                }
                i += 1;
            }
            match last {
                Some((t, end)) => {
                    out.push((t, s[start..end].to_string()));
                    i = end;
                }
                None => {
                    out.push((
                        Tok::Error,
                        format!("error expected: keyword found '{}'", &s[start..i]),
                    ));
                    return out;
                }
            }
            continue;
        }
        let start = i;
        while i < b.len() && b[i] != 0 && !is_space(b[i]) && !is_special(b[i]) {
            i += 1;
        }
        let word = &s[start..i];
        let t = match word {
            "in" => Tok::In,
            "notin" => Tok::NotIn,
            _ => Tok::Ident,
        };
        out.push((t, word.to_string()));
    }
}

struct Parser {
    items: Vec<(Tok, String)>,
    pos: usize,
}

/// Where `in` and `notin` are identifiers (values, keys) or keywords
/// (after a key).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Values,
    KeyAndOperator,
}

impl Parser {
    fn item(&self, i: usize, ctx: Ctx) -> (Tok, String) {
        let (t, l) = self
            .items
            .get(i)
            .cloned()
            .unwrap_or((Tok::End, String::new()));
        match t {
            Tok::In | Tok::NotIn if ctx == Ctx::Values => (Tok::Ident, l),
            _ => (t, l),
        }
    }

    fn lookahead(&self, ctx: Ctx) -> (Tok, String) {
        self.item(self.pos, ctx)
    }

    fn consume(&mut self, ctx: Ctx) -> (Tok, String) {
        let it = self.item(self.pos, ctx);
        self.pos += 1;
        it
    }

    fn parse(&mut self) -> Result<Vec<LabelReq>, String> {
        let mut reqs = Vec::new();
        loop {
            let (t, lit) = self.lookahead(Ctx::Values);
            match t {
                Tok::Ident | Tok::DoesNotExist => {
                    let r = self
                        .requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(r);
                    let (t, l) = self.consume(Ctx::Values);
                    match t {
                        Tok::End => return Ok(reqs),
                        Tok::Comma => {
                            let (t2, l2) = self.lookahead(Ctx::Values);
                            if t2 != Tok::Ident && t2 != Tok::DoesNotExist {
                                return Err(format!(
                                    "found '{l2}', expected: identifier after ','"
                                ));
                            }
                        }
                        _ => return Err(format!("found '{l}', expected: ',' or 'end of string'")),
                    }
                }
                Tok::End => return Ok(reqs),
                _ => {
                    return Err(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    ));
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<LabelReq, String> {
        let mut negated = false;
        let (mut t, mut lit) = self.consume(Ctx::Values);
        if t == Tok::DoesNotExist {
            negated = true;
            (t, lit) = self.consume(Ctx::Values);
        }
        if t != Tok::Ident {
            return Err(format!("found '{lit}', expected: identifier"));
        }
        let key = lit;
        // Go validates with a nil path here: the error reads "<nil>: …".
        validate_key(&key, "<nil>")?;
        let (next, _) = self.lookahead(Ctx::Values);
        if negated {
            return Ok(LabelReq {
                key,
                op: LabelOp::DoesNotExist,
            });
        }
        if next == Tok::End || next == Tok::Comma {
            return Ok(LabelReq {
                key,
                op: LabelOp::Exists,
            });
        }
        let (t, lit) = self.consume(Ctx::KeyAndOperator);
        let values = match t {
            Tok::In | Tok::NotIn => self.values()?,
            Tok::Equals | Tok::DoubleEquals | Tok::NotEquals | Tok::Gt | Tok::Lt => {
                self.exact_value()?
            }
            _ => {
                return Err(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                ));
            }
        };
        let op = match t {
            Tok::In | Tok::Equals | Tok::DoubleEquals => LabelOp::In(BTreeSet::new()),
            Tok::NotIn | Tok::NotEquals => LabelOp::NotIn(BTreeSet::new()),
            Tok::Gt => LabelOp::Gt(0),
            _ => LabelOp::Lt(0),
        };
        new_requirement(key, op, values)
    }

    /// `( a, b, … )`; `()` is the set holding the empty value, as in Go.
    fn values(&mut self) -> Result<BTreeSet<String>, String> {
        let (t, lit) = self.consume(Ctx::Values);
        if t != Tok::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (t, lit) = self.lookahead(Ctx::Values);
        match t {
            Tok::Ident | Tok::Comma => {
                let s = self.identifiers()?;
                let (t, _) = self.consume(Ctx::Values);
                if t != Tok::ClosePar {
                    return Err(format!("found '{lit}', expected: ')'"));
                }
                Ok(s)
            }
            Tok::ClosePar => {
                self.consume(Ctx::Values);
                Ok(BTreeSet::from([String::new()]))
            }
            _ => Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
    }

    fn identifiers(&mut self) -> Result<BTreeSet<String>, String> {
        let mut s = BTreeSet::new();
        loop {
            let (t, lit) = self.consume(Ctx::Values);
            match t {
                Tok::Ident => {
                    s.insert(lit);
                    let (t2, l2) = self.lookahead(Ctx::Values);
                    match t2 {
                        Tok::Comma => {}
                        Tok::ClosePar => return Ok(s),
                        _ => return Err(format!("found '{l2}', expected: ',' or ')'")),
                    }
                }
                Tok::Comma => {
                    if s.is_empty() {
                        s.insert(String::new());
                    }
                    let (t2, _) = self.lookahead(Ctx::Values);
                    if t2 == Tok::ClosePar {
                        s.insert(String::new());
                        return Ok(s);
                    }
                    if t2 == Tok::Comma {
                        self.consume(Ctx::Values);
                        s.insert(String::new());
                    }
                }
                _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
    }

    fn exact_value(&mut self) -> Result<BTreeSet<String>, String> {
        let (t, _) = self.lookahead(Ctx::Values);
        if t == Tok::End || t == Tok::Comma {
            return Ok(BTreeSet::from([String::new()]));
        }
        let (t, lit) = self.consume(Ctx::Values);
        if t == Tok::Ident {
            return Ok(BTreeSet::from([lit]));
        }
        Err(format!("found '{lit}', expected: identifier"))
    }
}

/// Go's `NewRequirement` checks, in its order; `op` carries the kind only.
fn new_requirement(key: String, op: LabelOp, values: BTreeSet<String>) -> Result<LabelReq, String> {
    let mut errs = Vec::new();
    let op = match op {
        LabelOp::In(_) | LabelOp::NotIn(_) if values.is_empty() => {
            errs.push(
                "values: Invalid value: []string{}: for 'in', 'notin' operators, values set can't be empty"
                    .to_string(),
            );
            op
        }
        LabelOp::In(_) => LabelOp::In(values.clone()),
        LabelOp::NotIn(_) => LabelOp::NotIn(values.clone()),
        LabelOp::Gt(_) | LabelOp::Lt(_) => {
            let v = values.iter().next().cloned().unwrap_or_default();
            match v.parse::<i64>() {
                Ok(n) if matches!(op, LabelOp::Gt(_)) => LabelOp::Gt(n),
                Ok(n) => LabelOp::Lt(n),
                Err(_) => {
                    errs.push(format!(
                        "values[0]: Invalid value: \"{v}\": for 'Gt', 'Lt' operators, the value must be an integer"
                    ));
                    op
                }
            }
        }
        other => other,
    };
    for (i, v) in values.iter().enumerate() {
        if let Err(e) = validate_value(v, &format!("values[{i}][{key}]")) {
            errs.push(e);
        }
    }
    match errs.len() {
        0 => Ok(LabelReq { key, op }),
        1 => Err(errs.remove(0)),
        _ => Err(format!("[{}]", errs.join(", "))),
    }
}

/// A parsed label selector; empty matches everything.
pub fn parse(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut p = Parser {
        items: lex(s),
        pos: 0,
    };
    let mut reqs = p.parse()?;
    // Go sorts requirements by key; evaluation order does not matter, but
    // the same order keeps generated SQL stable.
    reqs.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(reqs)
}

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(|l| {
        let b = l.as_bytes();
        !b.is_empty()
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    })
}

/// `validation.IsQualifiedName`, as `field.Invalid` at `path`.
pub fn validate_key(key: &str, path: &str) -> Result<(), String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > 253 {
                    errs.push("prefix part must be no more than 253 characters".to_string());
                }
                if !is_dns1123_subdomain(prefix) {
                    errs.push(format!(
                        "prefix part a lowercase RFC 1123 subdomain must consist of lower case \
                         alphanumeric characters, '-' or '.', and must start and end with an \
                         alphanumeric character (e.g. 'example.com', regex used for validation is \
                         '{DNS1123_SUBDOMAIN_FMT}')"
                    ));
                }
            }
            name
        }
        _ => {
            errs.push(format!(
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and \
                 must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  \
                 or '123-abc', regex used for validation is '{QUALIFIED_NAME_FMT}') with an \
                 optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
            return Err(invalid(path, key, &errs));
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_string());
    }
    if !name.is_empty() && !is_name_part(name) {
        errs.push(format!(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start \
             and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', \
             regex used for validation is '{QUALIFIED_NAME_FMT}')"
        ));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(invalid(path, key, &errs))
    }
}

/// `validation.IsValidLabelValue`, as `field.Invalid` at `path`.
fn validate_value(v: &str, path: &str) -> Result<(), String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !v.is_empty() && !is_name_part(v) {
        errs.push(format!(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', \
             '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  \
             or 'my_value',  or '12345', regex used for validation is '{LABEL_VALUE_FMT}')"
        ));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(invalid(path, v, &errs))
    }
}

/// `field.Invalid(path, value, detail).Error()`.
fn invalid(path: &str, value: &str, errs: &[String]) -> String {
    format!("{path}: Invalid value: \"{value}\": {}", errs.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_every_operator() {
        let r = parse("a=1, b==2,c!=3 , d in (x, y), e notin (z), f, !g, h>5, i<03").unwrap();
        let ops: Vec<(&str, &LabelOp)> = r.iter().map(|r| (r.key.as_str(), &r.op)).collect();
        assert_eq!(
            ops,
            vec![
                ("a", &LabelOp::In(set(&["1"]))),
                ("b", &LabelOp::In(set(&["2"]))),
                ("c", &LabelOp::NotIn(set(&["3"]))),
                ("d", &LabelOp::In(set(&["x", "y"]))),
                ("e", &LabelOp::NotIn(set(&["z"]))),
                ("f", &LabelOp::Exists),
                ("g", &LabelOp::DoesNotExist),
                ("h", &LabelOp::Gt(5)),
                ("i", &LabelOp::Lt(3)),
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("  ").unwrap(), vec![]);
    }

    #[test]
    fn go_corner_cases() {
        // An empty exact value, "()" and ",," all mean the empty value.
        assert_eq!(parse("a=").unwrap()[0].op, LabelOp::In(set(&[""])));
        assert_eq!(parse("a in ()").unwrap()[0].op, LabelOp::In(set(&[""])));
        assert_eq!(
            parse("a in (,b)").unwrap()[0].op,
            LabelOp::In(set(&["", "b"]))
        );
        // Keywords are identifiers where values and keys are expected.
        assert_eq!(parse("in in (notin)").unwrap()[0].key, "in");
        assert_eq!(
            parse("example.com/app-name=web.1").unwrap()[0].key,
            "example.com/app-name"
        );
    }

    #[test]
    fn refuses_what_kubernetes_refuses() {
        for (s, want) in [
            ("a=b=c", "found '=', expected: ',' or 'end of string'"),
            ("a in b", "found 'b' expected: '('"),
            ("a in (b", "found '', expected: ',' or ')'"),
            ("a,", "found '', expected: identifier after ','"),
            (
                "=a",
                "found '=', expected: !, identifier, or 'end of string'",
            ),
            (
                "a>x",
                "for 'Gt', 'Lt' operators, the value must be an integer",
            ),
            ("a=b c", "found 'c', expected: ',' or 'end of string'"),
            ("-a=b", "name part must consist of alphanumeric characters"),
            ("a=-b", "a valid label must be an empty string"),
            ("A/b=c", "prefix part a lowercase RFC 1123 subdomain"),
            ("a/b/c=d", "a qualified name must consist of"),
            ("a=<", "found '<', expected: identifier"),
            (
                "a>-5",
                "values[0][a]: Invalid value: \"-5\": a valid label must be",
            ),
            (
                "a_=b",
                "unable to parse requirement: <nil>: Invalid value: \"a_\": name part",
            ),
            ("a in (b,,)", "found ')', expected: ',', or identifier"),
            ("a <> b", "found '>', expected: identifier"),
        ] {
            let err = parse(s).expect_err(s);
            assert!(err.contains(want), "{s}: {err}");
        }
        let long = "x".repeat(64);
        assert!(
            parse(&format!("a={long}"))
                .unwrap_err()
                .contains("must be no more than 63 characters")
        );
        assert!(
            parse(&format!("{long}=a"))
                .unwrap_err()
                .contains("name part must be no more than 63 characters")
        );
    }

    #[test]
    fn matches_like_kubernetes() {
        let r = |s: &str| parse(s).unwrap().remove(0);
        assert!(r("a!=1").matches(None), "a missing label matches !=");
        assert!(r("a notin (1)").matches(None), "and notin");
        assert!(!r("a=1").matches(None));
        assert!(!r("a>1").matches(Some("x")), "not an integer");
        assert!(r("a>1").matches(Some("02")));
        assert!(!r("a<1").matches(Some("99999999999999999999")), "overflows");
        assert!(r("!a").matches(None) && !r("a").matches(None));
    }
}
