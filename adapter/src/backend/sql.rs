//! SQL text shared by every dialect: the range statement, which answers a
//! Range (latest or at a past revision) with the revision row and the count
//! in one statement, so one snapshot covers all three.
//!
//! State at a past revision R: live rows not modified after R, plus, for
//! every key changed after R, the version its first later change replaced
//! (`prev_revision`). Each half is sorted and limited on its own, so a page
//! costs O(page + changes since R), and the count reads names only (an index).

use std::cmp::Ordering;

use super::{KeyEnd, RangeQuery, SortTarget};
use crate::proto::mvccpb::KeyValue;
use crate::selector::{FieldReq, LabelOp, LabelReq, Selector};

/// A bound value; each dialect converts these to its driver's types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    Bytes(Vec<u8>),
    Int(i64),
    Text(String),
    /// NULL, of whatever type the statement gives the placeholder.
    Null,
}

impl Param {
    /// Text, or NULL when there is none (a nullable JSON column).
    pub fn text_or_null(t: Option<&str>) -> Param {
        t.map_or(Param::Null, |t| Param::Text(t.to_string()))
    }
}

/// The few spellings the shared statements need from a dialect.
#[derive(Clone, Copy, Debug)]
pub struct Dialect {
    /// `$1, $2, …` (PostgreSQL) instead of `?`.
    pub numbered: bool,
    /// A typed NULL of the bytes column type.
    pub null_bytes: &'static str,
    /// Put before a column, keeps the planner from using an index on it
    /// (SQLite's unary `+`); empty where the planner has statistics.
    pub no_index: &'static str,
    /// `etcdsql_live` has a (name, mod_revision) index (MySQL), and a
    /// range's names at a past revision are counted from it. Elsewhere an
    /// update changes no indexed column (PostgreSQL's heap-only updates),
    /// and they are counted from the names now and the history since.
    pub revision_index: bool,
    /// After `etcdsql_live` where the names of a range are counted: makes
    /// the planner read the (name, mod_revision) index rather than the rows
    /// (MySQL's `FORCE INDEX`; InnoDB otherwise scans the clustered rows).
    pub names_hint: &'static str,
    /// After `etcdsql_live` where rows are looked up by a list of names:
    /// keeps the planner to the primary key (MySQL's `USE INDEX`; it
    /// otherwise estimates the list on the (name, mod_revision) index too,
    /// which cost a quarter of such a lookup).
    pub by_names_hint: &'static str,
    /// History rows carry `part` too (PostgreSQL partitions history by
    /// epoch, then part; MySQL by epoch only).
    pub history_parts: bool,
    /// How selectors read the `labels` and `fields` JSON columns.
    pub json: Json,
    /// `UPDATE … ORDER BY … LIMIT n` is allowed (MySQL); elsewhere the rows
    /// are picked by a subquery.
    pub update_limit: bool,
    /// After a placeholder whose text goes into a JSON column.
    pub json_param: &'static str,
    /// An INSERT that skips rows whose key exists: `{insert_or_ignore}
    /// INTO … VALUES …{insert_or_ignore_tail}`.
    pub insert_or_ignore: &'static str,
    pub insert_or_ignore_tail: &'static str,
    /// A plain INSERT in a write transaction, which is rolled back whole if
    /// any of its statements fails. SQLite's `INSERT OR FAIL` keeps no
    /// statement journal (a copy of each page the statement changes, to
    /// undo it alone) for a multi-row INSERT.
    pub insert_whole: &'static str,
    /// Deletes the history rows that changes in `(?, ?]` superseded (a
    /// delete with a join, spelled differently by each database).
    pub purge_superseded: &'static str,
    /// A range reads the revision row in a `UNION ALL` part of its own,
    /// its live rows and (at a past revision) its history rows in parts
    /// of theirs, rather than through a join (see [`range`]). MariaDB
    /// sorts a join's rows by a column of its second table in a temporary
    /// table, on disk when the rows carry a BLOB; SQLite sorted a page of
    /// 500 rows three times in temporary B-trees, values and all.
    pub meta_apart: bool,
    /// With [`Self::meta_apart`], each row part is a parenthesized query,
    /// `UNION ALL (SELECT … ORDER BY … LIMIT n)` (MySQL), rather than a
    /// derived table, `UNION ALL SELECT * FROM (…) a` (SQLite allows no
    /// other): MariaDB writes a derived table's rows, values and all, to
    /// a temporary table on disk (a BLOB column) before the union reads
    /// them.
    pub paren_parts: bool,
}

impl Dialect {
    /// Positive selector terms find candidates in `etcdsql_label`: the JSON
    /// columns have no index except PostgreSQL's GIN.
    pub fn label_table(self) -> bool {
        self.json != Json::Postgres
    }
}

/// The JSON functions of a dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Json {
    /// JSONB: `@>` and `?` (GIN-indexed), `->>`.
    Postgres,
    /// `JSON_EXTRACT` / `JSON_CONTAINS_PATH` over a JSON column.
    MySql,
    /// `json_extract` / `json_type` over JSON text.
    Sqlite,
}

/// Which partitions a statement may read: `None` for all of them, or the
/// `part` values (identifiers from `etcdsql_partitions::part_ident`, so
/// inlined: the planner prunes on literals).
pub type Parts<'a> = Option<&'a [String]>;

/// Statement text with its parameters, in order.
#[derive(Clone, Debug)]
pub struct Statement {
    pub text: String,
    pub params: Vec<Param>,
    numbered: bool,
}

impl Statement {
    pub fn new(d: Dialect) -> Self {
        Statement {
            text: String::with_capacity(512),
            params: Vec::new(),
            numbered: d.numbered,
        }
    }

    /// `text` with each `?` bound to the next of `params`.
    pub fn with_params(d: Dialect, text: &str, params: &[Param]) -> Self {
        let mut s = Statement::new(d);
        let mut params = params.iter();
        for (i, part) in text.split('?').enumerate() {
            if i > 0 {
                match params.next() {
                    Some(p) => {
                        s.bind(p.clone());
                    }
                    None => {
                        s.push("?");
                    }
                }
            }
            s.push(part);
        }
        s
    }

    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.text.push_str(sql);
        self
    }

    /// Appends a placeholder bound to `p`.
    pub fn bind(&mut self, p: Param) -> &mut Self {
        self.params.push(p);
        if self.numbered {
            self.text.push('$');
            self.text.push_str(&self.params.len().to_string());
        } else {
            self.text.push('?');
        }
        self
    }

    /// `col = k`, `col >= k AND col < end` or `col >= k`.
    fn key_predicate(&mut self, col: &str, key: &[u8], end: &KeyEnd) {
        self.push(col);
        match end {
            KeyEnd::Single => {
                self.push(" = ").bind(Param::Bytes(key.to_vec()));
            }
            KeyEnd::Before(end) => {
                self.push(" >= ").bind(Param::Bytes(key.to_vec()));
                self.push(" AND ").push(col).push(" < ");
                self.bind(Param::Bytes(end.clone()));
            }
            KeyEnd::Unbounded => {
                self.push(" >= ").bind(Param::Bytes(key.to_vec()));
            }
        }
    }

    /// ` AND col IN ('a', …)` when `parts` limits the partitions.
    fn parts(&mut self, col: &str, parts: Parts) {
        if let Some(parts) = parts {
            self.push(" AND ").push(col).push(" IN (");
            for (i, p) in parts.iter().enumerate() {
                debug_assert!(p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
                if i > 0 {
                    self.push(", ");
                }
                self.push("'").push(p).push("'");
            }
            self.push(")");
        }
    }

    /// [`Self::parts`] on a history alias, where history has parts.
    fn history_parts(&mut self, d: Dialect, alias: &str, parts: Parts) {
        if d.history_parts {
            self.parts(&format!("{alias}.part"), parts);
        }
    }

    /// Conditions making `f` the first change after `rev` of a key in the
    /// range. Driven by the revision index: O(changes since `rev`).
    fn first_change_after(&mut self, d: Dialect, q: &RangeQuery, rev: i64, parts: Parts) {
        self.change_after(d, q, rev, parts, "f");
        self.history_parts(d, "p", parts);
        self.push(
            " AND NOT EXISTS (SELECT 1 FROM etcdsql_history e \
             WHERE e.name = f.name AND e.revision < f.revision AND e.revision > ",
        );
        self.bind(Param::Int(rev));
        self.history_parts(d, "e", parts);
        self.push(")");
    }

    /// History row `alias` is a change after `rev` of a key in the range,
    /// found by the revision index (not the name's).
    fn change_after(&mut self, d: Dialect, q: &RangeQuery, rev: i64, parts: Parts, alias: &str) {
        self.push(alias)
            .push(".revision > ")
            .bind(Param::Int(rev))
            .push(" AND ");
        self.key_predicate(&format!("{}{alias}.name", d.no_index), &q.key, &q.end);
        self.history_parts(d, alias, parts);
    }

    /// A derived table `(…)` of the names in the range at `q.at`.
    fn names(&mut self, d: Dialect, q: &RangeQuery, parts: Parts) {
        self.push("(SELECT name FROM etcdsql_live");
        if q.selector.is_none() {
            // A selector reads the rows, not just the names.
            self.push(d.names_hint);
        }
        self.push(" WHERE ");
        self.key_predicate("name", &q.key, &q.end);
        self.parts("part", parts);
        self.selector(d, q.selector.as_deref(), "", true);
        if let Some(rev) = q.at {
            self.push(" AND mod_revision <= ").bind(Param::Int(rev));
            self.push(
                " UNION ALL SELECT f.name FROM etcdsql_history f \
                 JOIN etcdsql_history p ON p.name = f.name AND p.revision = f.prev_revision WHERE ",
            );
            self.first_change_after(d, q, rev, parts);
            self.selector(d, q.selector.as_deref(), "p.", false);
        }
        self.push(")");
    }

    /// ` AND` a selector on the `labels`/`fields` columns of `alias`. Rows
    /// with NULL labels (values that are not readable Kubernetes objects)
    /// pass; see [`crate::selector`]. `live`: the rows are `etcdsql_live`'s,
    /// which `etcdsql_label` indexes.
    fn selector(&mut self, d: Dialect, sel: Option<&Selector>, alias: &str, live: bool) {
        let Some(sel) = sel else { return };
        if d.label_table() && live {
            self.label_candidates(sel, &format!("{alias}name"));
        }
        let (labels, fields) = (format!("{alias}labels"), format!("{alias}fields"));
        self.push(" AND (").push(&labels).push(" IS NULL OR (");
        let mut first = true;
        for r in &sel.labels {
            if !std::mem::take(&mut first) {
                self.push(" AND ");
            }
            self.label_req(d.json, &labels, r);
        }
        for r in &sel.fields {
            if !std::mem::take(&mut first) {
                self.push(" AND ");
            }
            self.field_req(d.json, &fields, r);
        }
        self.push("))");
    }

    /// ` AND name IN (…)` from `etcdsql_label` for each positive term with
    /// rows there ([`crate::selector::hash::of`]): the keys that may match
    /// it (unreadable values included).
    fn label_candidates(&mut self, sel: &Selector, name: &str) {
        use crate::selector::hash;
        let mut sets: Vec<Vec<hash::Hash>> = Vec::new();
        for r in &sel.labels {
            match &r.op {
                LabelOp::In(vals) => {
                    sets.push(vals.iter().map(|v| hash::label(&r.key, v)).collect());
                }
                // No rows for these (see `hash::of`).
                LabelOp::Exists
                | LabelOp::Gt(_)
                | LabelOp::Lt(_)
                | LabelOp::NotIn(_)
                | LabelOp::DoesNotExist => {}
            }
        }
        for r in &sel.fields {
            if !r.negated && !r.value.is_empty() && !r.field.starts_with("metadata.") {
                sets.push(vec![hash::field(&r.field, &r.value)]);
            }
        }
        for set in sets {
            // Integers from our own hash: inlined, as the planner estimates
            // literals best.
            let mut ints: Vec<i64> = set.iter().map(|h| h.stored()).collect();
            if sel.legacy_hashes {
                ints.extend(set.iter().map(|h| h.legacy()));
            }
            ints.push(hash::OPAQUE);
            ints.sort_unstable();
            ints.dedup();
            let list: Vec<String> = ints.iter().map(i64::to_string).collect();
            self.push(" AND ")
                .push(name)
                .push(" IN (SELECT name FROM etcdsql_label WHERE h IN (")
                .push(&list.join(", "))
                .push("))");
        }
    }

    /// The value of JSON member `key` of `col` as text (NULL if absent).
    fn json_text(&mut self, j: Json, col: &str, key: &str) {
        match j {
            Json::Postgres => {
                self.push("(").push(col).push(" ->> ");
                self.bind(Param::Text(key.to_string())).push("::text)");
            }
            Json::MySql => {
                self.push("JSON_UNQUOTE(JSON_EXTRACT(").push(col).push(", ");
                self.bind(Param::Text(json_path(key))).push("))");
            }
            Json::Sqlite => {
                self.push("json_extract(").push(col).push(", ");
                self.bind(Param::Text(json_path(key))).push(")");
            }
        }
    }

    /// Whether member `key` of `col` exists.
    fn json_has(&mut self, j: Json, col: &str, key: &str) {
        match j {
            Json::Postgres => {
                self.push("(").push(col).push(" ? ");
                self.bind(Param::Text(key.to_string())).push("::text)");
            }
            Json::MySql => {
                self.push("JSON_CONTAINS_PATH(").push(col).push(", 'one', ");
                self.bind(Param::Text(json_path(key))).push(")");
            }
            Json::Sqlite => {
                self.push("(json_type(").push(col).push(", ");
                self.bind(Param::Text(json_path(key)))
                    .push(") IS NOT NULL)");
            }
        }
    }

    /// `col` holds member `key` with one of `values` (exact, byte for byte).
    fn json_in<'v>(
        &mut self,
        j: Json,
        col: &str,
        key: &str,
        values: impl IntoIterator<Item = &'v String>,
    ) {
        match j {
            Json::Postgres => {
                // Containment is what the GIN index answers.
                self.push("(");
                for (i, v) in values.into_iter().enumerate() {
                    if i > 0 {
                        self.push(" OR ");
                    }
                    let doc = serde_json::json!({ key: v }).to_string();
                    self.push(col).push(" @> ").bind(Param::Text(doc));
                    self.push("::text::jsonb");
                }
                self.push(")");
            }
            Json::MySql | Json::Sqlite => {
                self.exact(j, |s| s.json_text(j, col, key));
                self.push(" IN (");
                for (i, v) in values.into_iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.bind_exact(j, v);
                }
                self.push(")");
            }
        }
    }

    /// A text expression compared byte for byte: MySQL's JSON functions
    /// return a collation that may ignore case, so there it is cast to
    /// BINARY (and compared with [`Self::bind_exact`]).
    fn exact(&mut self, j: Json, expr: impl FnOnce(&mut Self)) {
        if j == Json::MySql {
            self.push("CAST(");
            expr(self);
            self.push(" AS BINARY)");
        } else {
            expr(self);
        }
    }

    /// A value an [`Self::exact`] expression is compared with.
    fn bind_exact(&mut self, j: Json, v: &str) {
        if j == Json::MySql {
            self.bind(Param::Bytes(v.as_bytes().to_vec()));
        } else {
            self.bind(Param::Text(v.to_string()));
        }
    }

    /// Kubernetes' `Requirement.Matches` on the `labels` column.
    fn label_req(&mut self, j: Json, col: &str, r: &LabelReq) {
        match &r.op {
            LabelOp::In(vals) => self.json_in(j, col, &r.key, vals),
            LabelOp::NotIn(vals) if j == Json::Postgres => {
                // Containment is false for a missing label: it matches.
                self.push("NOT ");
                self.json_in(j, col, &r.key, vals);
            }
            LabelOp::NotIn(vals) => {
                // IN over a missing member is NULL: test presence first.
                self.push("(NOT ");
                self.json_has(j, col, &r.key);
                self.push(" OR NOT ");
                self.json_in(j, col, &r.key, vals);
                self.push(")");
            }
            LabelOp::Exists => self.json_has(j, col, &r.key),
            LabelOp::DoesNotExist => {
                self.push("NOT ");
                self.json_has(j, col, &r.key);
            }
            LabelOp::Gt(n) => self.label_int(j, col, &r.key, ">", *n),
            LabelOp::Lt(n) => self.label_int(j, col, &r.key, "<", *n),
        }
    }

    /// `gt`/`lt`: the label is present and parses as an int64 (Go's
    /// `strconv.ParseInt`), and compares with `n`.
    fn label_int(&mut self, j: Json, col: &str, key: &str, op: &str, n: i64) {
        match j {
            Json::Postgres | Json::MySql => {
                let (re, num) = if j == Json::Postgres {
                    (" ~ '^[+-]?[0-9]+$'", "numeric")
                } else {
                    (" REGEXP '^[+-]?[0-9]+$'", "DECIMAL(65,0)")
                };
                self.push("(CASE WHEN ");
                self.json_text(j, col, key);
                self.push(re).push(" THEN CAST(");
                self.json_text(j, col, key);
                self.push(" AS ").push(num).push(") BETWEEN ");
                self.push("-9223372036854775808 AND 9223372036854775807 AND CAST(");
                self.json_text(j, col, key);
                self.push(" AS ").push(num).push(") ").push(op).push(" ");
                self.bind(Param::Int(n));
                self.push(if j == Json::Postgres {
                    "::int8 ELSE false END)"
                } else {
                    " ELSE 0 END)"
                });
            }
            Json::Sqlite => {
                // No regular expressions: digits after an optional sign, and
                // at most int64's digits (compared as text at 19 digits).
                let v = |s: &mut Self| s.json_text(j, col, key);
                let digits = |s: &mut Self| {
                    s.push("ltrim(ltrim(");
                    v(s);
                    s.push(", '+-'), '0')");
                };
                self.push("(CASE WHEN (");
                v(self);
                self.push(" GLOB '[0-9]*' OR ");
                v(self);
                self.push(" GLOB '[+-][0-9]*') AND substr(");
                v(self);
                self.push(", 2) NOT GLOB '*[^0-9]*' AND (length(");
                digits(self);
                self.push(") < 19 OR (length(");
                digits(self);
                self.push(") = 19 AND ");
                digits(self);
                self.push(" <= CASE WHEN ");
                v(self);
                self.push(
                    " GLOB '-*' THEN '9223372036854775808' ELSE '9223372036854775807' END)) \
                     THEN CAST(",
                );
                v(self);
                self.push(" AS INTEGER) ").push(op).push(" ");
                self.bind(Param::Int(n));
                self.push(" ELSE 0 END)");
            }
        }
    }

    /// A field requirement on the `fields` column; a missing field is "".
    fn field_req(&mut self, j: Json, col: &str, r: &FieldReq) {
        if r.negated {
            self.push("NOT ");
        }
        if j == Json::Postgres && !r.value.is_empty() {
            self.json_in(j, col, &r.field, [&r.value]);
            return;
        }
        self.push("(");
        self.exact(j, |s| {
            s.push("COALESCE(");
            s.json_text(j, col, &r.field);
            s.push(", '')");
        });
        self.push(" = ");
        self.bind_exact(j, &r.value);
        self.push(")");
    }

    /// ` AND` the revision filters of `q`, on these columns.
    fn revision_filters(&mut self, q: &RangeQuery, mod_col: &str, create_col: &str) {
        for (op, col, v) in [
            (">=", mod_col, q.min_mod_revision),
            ("<=", mod_col, q.max_mod_revision),
            (">=", create_col, q.min_create_revision),
            ("<=", create_col, q.max_create_revision),
        ] {
            if v != 0 {
                self.push(" AND ").push(col).push(" ").push(op).push(" ");
                self.bind(Param::Int(v));
            }
        }
    }

    /// ` ORDER BY … [LIMIT n]`.
    fn order_limit(&mut self, q: &RangeQuery, limit: Option<i64>) {
        self.push(" ORDER BY ").push(&order_by(q, ""));
        self.limit(limit);
    }

    fn limit(&mut self, limit: Option<i64>) {
        if let Some(n) = limit {
            self.push(" LIMIT ").bind(Param::Int(n));
        }
    }

    /// The range's count when it is counted (and not by its rows, see
    /// [`counted_by_rows`]), else `zero`.
    fn total(&mut self, d: Dialect, q: &RangeQuery, parts: Parts, zero: &str) {
        if !q.count || counted_by_rows(q) {
            self.push(zero);
        } else if let Some(rev) = q.at.filter(|_| !d.revision_index) {
            self.count_since(d, q, rev, parts);
        } else {
            self.push("(SELECT COUNT(*) FROM ");
            self.names(d, q, parts);
            self.push(" cnt)");
        }
    }

    /// The range's count at `rev` without reading `mod_revision` from the
    /// live rows: the names now, less those whose last change (not a
    /// deletion) came after `rev`, plus those that existed at `rev` and
    /// changed since. The last two come from the history after `rev`.
    fn count_since(&mut self, d: Dialect, q: &RangeQuery, rev: i64, parts: Parts) {
        let sel = q.selector.as_deref();
        self.push("((SELECT COUNT(*) FROM etcdsql_live WHERE ");
        self.key_predicate("name", &q.key, &q.end);
        self.parts("part", parts);
        self.selector(d, sel, "", true);
        self.push(") - (SELECT COUNT(*) FROM etcdsql_history h WHERE ");
        self.change_after(d, q, rev, parts, "h");
        self.push(
            " AND h.deleted = 0 AND NOT EXISTS (SELECT 1 FROM etcdsql_history e \
             WHERE e.name = h.name AND e.revision > h.revision",
        );
        self.history_parts(d, "e", parts);
        self.push(")");
        self.selector(d, sel, "h.", false);
        self.push(
            ") + (SELECT COUNT(*) FROM etcdsql_history f \
             JOIN etcdsql_history p ON p.name = f.name AND p.revision = f.prev_revision WHERE ",
        );
        self.first_change_after(d, q, rev, parts);
        self.selector(d, sel, "p.", false);
        self.push("))");
    }

    /// `r.value`, or a NULL of its type where only keys are read.
    fn value(&mut self, d: Dialect, q: &RangeQuery) {
        self.push(if q.keys_only { d.null_bytes } else { "r.value" });
    }

    /// A derived table `(…)` with columns name (the key), value,
    /// create_revision, mod_revision, version, lease: the rows of the range at
    /// `q.at` that pass its revision filters, each half in order and cut at
    /// `limit`.
    fn rows(&mut self, d: Dialect, q: &RangeQuery, limit: Option<i64>, parts: Parts) {
        self.push("(");
        self.live_part(d, q, limit, parts, false);
        if let Some(rev) = q.at {
            self.push(" UNION ALL ");
            self.history_part(d, q, rev, limit, parts, false);
        }
        self.push(")");
    }

    /// `SELECT * FROM (SELECT … FROM etcdsql_live r …) a` (with `meta` and
    /// [`Dialect::paren_parts`], `(SELECT … FROM etcdsql_live r …)`): the
    /// live rows of the range at `q.at` that pass its filters, in order and
    /// cut at `limit`. With `meta` (see [`apart_range`]), each row starts with the
    /// revision row's two columns and a count of -1, ends with its
    /// partitions_version, and has no value when only keys are read; the
    /// join form reads values even then (it may sort a part by them).
    fn live_part(
        &mut self,
        d: Dialect,
        q: &RangeQuery,
        limit: Option<i64>,
        parts: Parts,
        meta: bool,
    ) {
        self.part_head(d, q, "r", meta);
        self.push(
            " AS value, r.create_revision AS create_revision, r.mod_revision AS mod_revision, \
             r.version AS version, r.lease AS lease",
        );
        self.part_tail("FROM etcdsql_live r", meta);
        self.key_predicate("r.name", &q.key, &q.end);
        self.parts("r.part", parts);
        if let Some(rev) = q.at {
            self.push(" AND r.mod_revision <= ").bind(Param::Int(rev));
        }
        self.revision_filters(q, "r.mod_revision", "r.create_revision");
        self.selector(d, q.selector.as_deref(), "r.", true);
        self.order_limit(q, limit);
        self.part_close(d, meta, "a");
    }

    /// `SELECT * FROM (SELECT … FROM etcdsql_history …) b`: the version each
    /// key of the range had at `rev`, where it changed since, as
    /// [`Self::live_part`] reads live rows.
    fn history_part(
        &mut self,
        d: Dialect,
        q: &RangeQuery,
        rev: i64,
        limit: Option<i64>,
        parts: Parts,
        meta: bool,
    ) {
        self.part_head(d, q, "p", meta);
        self.push(
            " AS value, p.create_revision AS create_revision, p.revision AS mod_revision, \
             p.version AS version, p.lease AS lease",
        );
        self.part_tail(
            "FROM etcdsql_history f \
             JOIN etcdsql_history p ON p.name = f.name AND p.revision = f.prev_revision",
            meta,
        );
        self.first_change_after(d, q, rev, parts);
        self.revision_filters(q, "p.revision", "p.create_revision");
        self.selector(d, q.selector.as_deref(), "p.", false);
        self.order_limit(q, limit);
        self.part_close(d, meta, "b");
    }

    /// A part's columns up to its value's, from table alias `t`.
    fn part_head(&mut self, d: Dialect, q: &RangeQuery, t: &str, meta: bool) {
        self.push(if parenthesized(d, meta) {
            "(SELECT "
        } else {
            "SELECT * FROM (SELECT "
        });
        if meta {
            self.push("m.revision, m.compact_revision, -1, ");
        }
        self.push(t).push(".name AS name, ");
        if meta && q.keys_only {
            self.push(d.null_bytes);
        } else {
            self.push(t).push(".value");
        }
    }

    /// Closes what [`Self::part_head`] opened: `)`, or `) alias` for a
    /// derived table.
    fn part_close(&mut self, d: Dialect, meta: bool, alias: &str) {
        self.push(")");
        if !parenthesized(d, meta) {
            self.push(" ").push(alias);
        }
    }

    /// A part's last column, `from` (joined to the revision row with
    /// `meta`) and ` WHERE `.
    fn part_tail(&mut self, from: &str, meta: bool) {
        if meta {
            self.push(", m.partitions_version ").push(from);
            self.push(" JOIN etcdsql_meta m ON m.id = 1 WHERE ");
        } else {
            self.push(" ").push(from).push(" WHERE ");
        }
    }
}

/// Whether a range part is a parenthesized query rather than a derived
/// table (see [`Dialect::paren_parts`]).
fn parenthesized(d: Dialect, meta: bool) -> bool {
    meta && d.paren_parts
}

/// `prefix (?, ?, …)` with `n` placeholders.
pub fn in_list(prefix: &str, n: usize) -> String {
    format!("{prefix} ({})", vec!["?"; n].join(", "))
}

/// A JSON path naming one member: `$."key"` (label keys and field names
/// hold no quotes or backslashes; JSON-escaped anyway).
fn json_path(key: &str) -> String {
    format!("$.{}", serde_json::Value::String(key.to_string()))
}

fn sort_column(t: SortTarget) -> &'static str {
    match t {
        SortTarget::Key => "name",
        SortTarget::Version => "version",
        SortTarget::Create => "create_revision",
        SortTarget::Mod => "mod_revision",
        SortTarget::Value => "value",
    }
}

fn order_by(q: &RangeQuery, prefix: &str) -> String {
    let dir = if q.descending { " DESC" } else { "" };
    let col = sort_column(q.sort);
    if q.sort == SortTarget::Key {
        format!("{prefix}name{dir}")
    } else {
        // etcd sorts a key-ordered list with a stable sort for small lists:
        // ties stay in key order.
        format!("{prefix}{col}{dir}, {prefix}name")
    }
}

/// Whether `q`'s count is the number of rows it reads, so the statement
/// need not count: one key, read whole (etcd counts before revision
/// filters, and a selector filters the count too). Most reads are such:
/// kube-apiserver's GET and GuaranteedUpdate's read.
pub fn counted_by_rows(q: &RangeQuery) -> bool {
    q.count
        && matches!(q.end, KeyEnd::Single)
        && !q.count_only
        && q.selector.is_none()
        && q.min_mod_revision == 0
        && q.max_mod_revision == 0
        && q.min_create_revision == 0
        && q.max_create_revision == 0
}

/// Whether [`range_order`] can order `q`'s rows: not by value when the
/// values are not read.
pub fn orderable(q: &RangeQuery) -> bool {
    !(q.keys_only && q.sort == SortTarget::Value)
}

/// [`order_by`]'s order, as etcd sorts: by the sort target, ties in key
/// order.
pub fn range_order(q: &RangeQuery, a: &KeyValue, b: &KeyValue) -> Ordering {
    let by = match q.sort {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    let by = if q.descending { by.reverse() } else { by };
    by.then_with(|| a.key.cmp(&b.key))
}

/// The range statement. Columns: revision, compact_revision, count, then
/// name, value, create_revision, mod_revision, version, lease (NULL when the
/// range is empty; exactly one row then), then partitions_version (which
/// partition layout the snapshot had, see [`Parts`]).
pub fn range(d: Dialect, q: &RangeQuery, parts: Parts) -> Statement {
    let limit = if q.count_only {
        Some(0)
    } else {
        (q.fetch_limit > 0).then_some(q.fetch_limit)
    };
    if d.meta_apart && orderable(q) {
        return apart_range(d, q, limit, parts);
    }
    let mut s = Statement::new(d);
    s.push("SELECT m.revision, m.compact_revision, ");
    // A zero of COUNT's type in every dialect.
    s.total(
        d,
        q,
        parts,
        "(SELECT COUNT(*) FROM etcdsql_meta WHERE 1 = 0)",
    );
    s.push(" AS total, r.name, ");
    s.value(d, q);
    s.push(
        ", r.create_revision, r.mod_revision, r.version, r.lease, m.partitions_version \
         FROM etcdsql_meta m LEFT JOIN (SELECT * FROM ",
    );
    s.rows(d, q, limit, parts);
    s.push(" st");
    s.order_limit(q, limit);
    s.push(") r ON 1=1 WHERE m.id = 1");
    if !orderable(q) {
        // Otherwise RangeFold::finish orders the rows: sorting a page, values
        // and all, again after the join cost PostgreSQL about 0.3 ms per
        // 500-row page.
        s.push(" ORDER BY ").push(&order_by(q, "r."));
    }
    s
}

/// The latest versions of single `keys` (those that exist) with the
/// revision row, in the columns of [`range`], as one statement: single-key
/// reads gathered ([`crate::store`]'s read batches). The list of names is
/// padded to a power of two by repeating the last, so that a dialect sees
/// few distinct statements.
pub fn latest(d: Dialect, keys: &[Vec<u8>], parts: Parts) -> Statement {
    let mut s = Statement::new(d);
    s.push(
        "SELECT m.revision, m.compact_revision, 0, r.name, r.value, r.create_revision, \
         r.mod_revision, r.version, r.lease, m.partitions_version \
         FROM etcdsql_meta m LEFT JOIN etcdsql_live r",
    );
    s.push(d.by_names_hint);
    s.push(" ON r.name IN (");
    let padded = keys.len().next_power_of_two();
    for i in 0..padded {
        if i > 0 {
            s.push(", ");
        }
        let k = keys.get(i).or(keys.last()).cloned().unwrap_or_default();
        s.bind(Param::Bytes(k));
    }
    s.push(")");
    s.parts("r.part", parts);
    s.push(" WHERE m.id = 1");
    s
}

/// [`range`] for [`Dialect::meta_apart`]: the revision row and the count
/// with NULLs for the rest, then the live rows and, at a past revision, the
/// history rows (count -1), all read by the one statement. It starts with
/// SELECT, as proxies' read rules expect (ProxySQL's `^SELECT`). Each
/// part's ORDER BY picks the rows its LIMIT keeps; the order of the whole,
/// and the cut of the two parts to one limit, are [`range_order`]'s,
/// applied after (a database may drop ORDER BY in a UNION part).
fn apart_range(d: Dialect, q: &RangeQuery, limit: Option<i64>, parts: Parts) -> Statement {
    let mut s = Statement::new(d);
    s.push("SELECT m.revision, m.compact_revision, ");
    s.total(d, q, parts, "0");
    s.push(
        ", NULL, NULL, NULL, NULL, NULL, NULL, m.partitions_version FROM etcdsql_meta m \
         WHERE m.id = 1 UNION ALL ",
    );
    s.live_part(d, q, limit, parts, true);
    if let Some(rev) = q.at {
        s.push(" UNION ALL ");
        s.history_part(d, q, rev, limit, parts, true);
    }
    s
}

/// Changes in revisions `(after, upto]`, optionally within a key range,
/// in revision order, each with the version it replaced. Columns: revision,
/// sub, deleted, name, value, create_revision, version, lease, then the
/// replaced version's value, create_revision, version, lease, revision
/// (NULL for a create).
pub fn history(
    d: Dialect,
    after: i64,
    upto: i64,
    range: Option<(&[u8], &KeyEnd)>,
    parts: Parts,
) -> Statement {
    let mut s = Statement::new(d);
    s.push(
        "SELECT h.revision, h.sub, h.deleted, h.name, h.value, h.create_revision, h.version, \
         h.lease, p.value, p.create_revision, p.version, p.lease, p.revision \
         FROM etcdsql_history h LEFT JOIN etcdsql_history p \
         ON p.name = h.name AND p.revision = h.prev_revision",
    );
    if range.is_some() {
        s.history_parts(d, "p", parts);
    }
    s.push(" WHERE h.revision > ");
    s.bind(Param::Int(after))
        .push(" AND h.revision <= ")
        .bind(Param::Int(upto));
    if let Some((key, end)) = range {
        s.push(" AND ");
        s.key_predicate("h.name", key, end);
        s.history_parts(d, "h", parts);
    }
    s.push(" ORDER BY h.revision, h.sub");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    // The dialects as their databases' modules define them.
    const PG: Dialect = super::super::postgres::DIALECT;
    const MY: Dialect = super::super::mysql::DIALECT;
    const SQ: Dialect = super::super::sqlite::DIALECT;

    fn kv(key: &str, value: &str, mod_revision: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            mod_revision,
            ..Default::default()
        }
    }

    #[test]
    fn range_order_is_etcds() {
        let mut q = RangeQuery::all(b"a".to_vec(), KeyEnd::Before(b"z".to_vec()), None);
        let mut kvs = vec![kv("c", "x", 2), kv("a", "y", 3), kv("b", "x", 3)];
        let keys = |q: &RangeQuery, kvs: &mut Vec<KeyValue>| {
            kvs.sort_by(|a, b| range_order(q, a, b));
            kvs.iter().map(|k| k.key[0] as char).collect::<String>()
        };
        assert_eq!(keys(&q, &mut kvs), "abc");
        q.descending = true;
        assert_eq!(keys(&q, &mut kvs), "cba");
        // Other targets: ties stay in ascending key order, either way.
        q.sort = SortTarget::Mod;
        assert_eq!(keys(&q, &mut kvs), "abc");
        q.descending = false;
        assert_eq!(keys(&q, &mut kvs), "cab");
        q.sort = SortTarget::Value;
        assert_eq!(keys(&q, &mut kvs), "bca");
        assert!(orderable(&q));
        q.keys_only = true;
        assert!(!orderable(&q));
    }

    #[test]
    fn ranges_read_the_revision_row_apart_on_mysql_and_sqlite() {
        let sq = crate::backend::sqlite::DIALECT;
        for at in [None, Some(3)] {
            let q = RangeQuery::all(b"a".to_vec(), KeyEnd::Before(b"b".to_vec()), at);
            for d in [MY, sq] {
                let t = range(d, &q, None).text;
                // MySQL's parts are parenthesized queries, SQLite's derived
                // tables.
                let part = if d.paren_parts {
                    " UNION ALL (SELECT"
                } else {
                    " UNION ALL SELECT * FROM (SELECT"
                };
                let parts = 1 + usize::from(at.is_some());
                assert!(
                    t.starts_with("SELECT") && t.matches(part).count() == parts,
                    "{t}"
                );
                assert!(!t.contains("LEFT JOIN"));
                // A past revision adds the history part.
                assert_eq!(t.contains("etcdsql_history"), at.is_some(), "{t}");
            }
            assert!(MY.paren_parts && !sq.paren_parts);
            // PostgreSQL keeps the join.
            assert!(range(PG, &q, None).text.contains("LEFT JOIN"));
        }
        // Keys only, by value: the rows cannot be ordered after; the join.
        let mut q = RangeQuery::all(b"a".to_vec(), KeyEnd::Before(b"b".to_vec()), None);
        q.keys_only = true;
        q.sort = SortTarget::Value;
        assert!(range(MY, &q, None).text.contains("LEFT JOIN"));
    }

    #[test]
    fn placeholders_follow_the_dialect() {
        let q = RangeQuery::all(b"a".to_vec(), KeyEnd::Before(b"b".to_vec()), Some(7));
        let pg = range(PG, &q, None);
        let n = pg.params.len();
        assert!(n > 2 && pg.text.contains(&format!("${n}")), "{}", pg.text);
        assert!(!pg.text.contains(&format!("${}", n + 1)) && !pg.text.contains('?'));
        let my = range(MY, &q, None);
        assert_eq!(my.text.matches('?').count(), my.params.len());
        assert!(!my.text.contains('$'));
    }

    #[test]
    fn with_params_numbers_placeholders() {
        let s = Statement::with_params(PG, "a = ? AND b <= ?", &[Param::Int(1), Param::Int(2)]);
        assert_eq!(s.text, "a = $1 AND b <= $2");
        assert_eq!(s.params, vec![Param::Int(1), Param::Int(2)]);
        let s = Statement::with_params(MY, "a = ?", &[Param::Int(1)]);
        assert_eq!(s.text, "a = ?");
    }

    #[test]
    fn latest_reads_touch_no_history() {
        let q = RangeQuery::all(b"a".to_vec(), KeyEnd::Single, None);
        let s = range(MY, &q, None);
        assert!(!s.text.contains("etcdsql_history"));
        assert_eq!(s.params, vec![Param::Bytes(b"a".to_vec())]);
    }

    #[test]
    fn one_key_is_counted_by_its_rows() {
        let one = RangeQuery::all(b"a".to_vec(), KeyEnd::Single, Some(7));
        let many = RangeQuery::all(b"a".to_vec(), KeyEnd::Before(b"b".to_vec()), Some(7));
        let filtered = RangeQuery {
            min_mod_revision: 3,
            ..one.clone()
        };
        let count_only = RangeQuery {
            count_only: true,
            ..one.clone()
        };
        // The names counted: a derived table, or the live rows now.
        let counts =
            |t: &str| t.contains(" cnt)") || t.contains("(SELECT COUNT(*) FROM etcdsql_live ");
        for d in [PG, MY, SQ] {
            assert!(!counts(&range(d, &one, None).text));
            for q in [&many, &filtered, &count_only] {
                assert!(counts(&range(d, q, None).text), "{q:?}");
            }
        }
    }

    #[test]
    fn counts_at_a_revision_read_no_live_revisions_without_their_index() {
        let q = RangeQuery::all(b"a".to_vec(), KeyEnd::Before(b"b".to_vec()), Some(7));
        let names_at = " AND mod_revision <= ";
        assert!(range(MY, &q, None).text.contains(names_at));
        for d in [PG, SQ] {
            let t = range(d, &q, None).text;
            assert!(!t.contains(names_at), "{t}");
            assert!(t.contains("h.deleted = 0 AND NOT EXISTS"), "{t}");
        }
        // At the latest revision the live rows alone are counted.
        let now = RangeQuery { at: None, ..q };
        assert!(!range(PG, &now, None).text.contains("etcdsql_history"));
    }

    #[test]
    fn latest_pads_the_names_to_a_power_of_two_and_reads_the_parts() {
        let keys: Vec<Vec<u8>> = [&b"/a"[..], b"/b", b"/c"].map(<[u8]>::to_vec).to_vec();
        let parts = vec!["pods".to_string()];
        let pg = latest(PG, &keys, Some(&parts));
        assert!(
            pg.text
                .contains("r.name IN ($1, $2, $3, $4) AND r.part IN ('pods')")
        );
        assert!(matches!(&pg.params[3], Param::Bytes(k) if k == b"/c"));
        let my = latest(MY, &keys[..1], None);
        assert!(
            my.text.contains("r.name IN (?) WHERE m.id = 1"),
            "{}",
            my.text
        );
        assert_eq!(latest(MY, &keys[..2], None).params.len(), 2);
    }

    #[test]
    fn parts_limit_live_and_history_where_history_has_them() {
        let q = RangeQuery::all(
            b"/registry/pods/".to_vec(),
            KeyEnd::Before(b"/registry/pods0".to_vec()),
            Some(7),
        );
        let parts = vec!["pods".to_string()];
        let pg = range(PG, &q, Some(&parts));
        // Live rows and count, the history part and count (f, p, e each),
        // the count's changed names (h, e).
        assert_eq!(pg.text.matches("part IN ('pods')").count(), 2 + 2 * 3 + 2);
        let my = range(MY, &q, Some(&parts));
        assert_eq!(my.text.matches("part IN ('pods')").count(), 2);
        assert!(range(MY, &q, None).text.contains("m.partitions_version"));
        let h = history(PG, 1, 9, Some((&q.key, &q.end)), Some(&parts));
        assert!(h.text.contains("h.part IN ('pods')"));
    }

    #[test]
    fn sort_ties_fall_back_to_key_order() {
        let mut q = RangeQuery::all(b"a".to_vec(), KeyEnd::Unbounded, None);
        q.sort = SortTarget::Version;
        q.descending = true;
        assert_eq!(order_by(&q, "r."), "r.version DESC, r.name");
        q.sort = SortTarget::Key;
        assert_eq!(order_by(&q, ""), "name DESC");
    }
}
