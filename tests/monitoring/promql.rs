//! Just enough PromQL to find the series selectors in an expression (a tokenizer, not a regex
//! over the text), and the Prometheus text exposition they are checked against: every
//! `fulcrum_` name must be a sample name of a real scrape (so a histogram is named through its
//! `_bucket`, `_sum` or `_count`), and every label matcher must name a label, and where it is a
//! literal a value, that the scrape has for that name.
//!
//! Strings, comments and Grafana variables (`$x`, `${x}`) are skipped whole, so a metric name
//! inside a label value or a legend is never taken for a selector. The `{__name__="..."}` form
//! is not recognised; the dashboard and the rules do not use it.

use std::collections::{BTreeMap, BTreeSet};

/// Labels Prometheus adds to every scraped series: absent from the exposition, always there.
pub const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// One token of a PromQL expression (or a Grafana query such as `label_values(...)`).
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    /// A metric, label or function name, or a keyword.
    Ident(String),
    /// The content of a string literal, escapes resolved.
    Str(String),
    /// A number or a duration (`5m`, `0.99`, `1e3`).
    Number(String),
    /// A Grafana variable (`$job`, `${backend}`, `$__rate_interval`).
    Variable(String),
    /// An operator or a bracket; two-character operators are one token.
    Punct(String),
}

/// Splits `expr` into tokens; an unterminated string or variable is an error.
pub fn tokenize(expr: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    // ':' may continue a name (recording rules) but not start one: `[5m:1m]` is a subquery
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            let mut s = String::new();
            i += 1;
            loop {
                let Some(&d) = chars.get(i) else {
                    return Err(format!("unterminated string in {expr:?}"));
                };
                i += 1;
                if d == c {
                    break;
                }
                if d == '\\' && c != '`' {
                    let e = *chars.get(i).ok_or(format!("dangling escape in {expr:?}"))?;
                    i += 1;
                    s.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    });
                } else {
                    s.push(d);
                }
            }
            out.push(Token::Str(s));
        } else if c == '$' {
            i += 1;
            let start = i;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                if i == chars.len() {
                    return Err(format!("unterminated variable in {expr:?}"));
                }
                i += 1;
            } else {
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
            }
            out.push(Token::Variable(chars[start..i].iter().collect()));
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Token::Number(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let len = if ["=~", "!~", "!=", "==", ">=", "<="].contains(&two.as_str()) {
                2
            } else {
                1
            };
            out.push(Token::Punct(chars[i..i + len].iter().collect()));
            i += len;
        }
    }
    Ok(out)
}

/// A label matcher of a selector: `label op "value"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    /// The label name.
    pub label: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: String,
    /// The value (a regex for `=~`/`!~`); `None` when it is a Grafana variable.
    pub value: Option<String>,
}

/// A series selector naming a `fulcrum_` metric, with its label matchers.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    /// The metric name.
    pub metric: String,
    /// What is inside the braces, if any.
    pub matchers: Vec<Matcher>,
}

/// Every selector of a `fulcrum_` metric in `expr`.
pub fn selectors(expr: &str) -> Result<Vec<Selector>, String> {
    let tokens = tokenize(expr)?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let Token::Ident(name) = &tokens[i] else {
            i += 1;
            continue;
        };
        i += 1;
        if !name.starts_with("fulcrum_") {
            continue;
        }
        let mut sel = Selector {
            metric: name.clone(),
            matchers: Vec::new(),
        };
        if tokens.get(i) == Some(&Token::Punct("{".into())) {
            i += 1;
            loop {
                match tokens.get(i..i + 3) {
                    Some([Token::Ident(label), Token::Punct(op), value]) => {
                        let value = match value {
                            Token::Str(s) if !s.contains('$') => Some(s.clone()),
                            Token::Str(_) | Token::Variable(_) => None,
                            other => {
                                return Err(format!("bad matcher value {other:?} in {expr:?}"))
                            }
                        };
                        sel.matchers.push(Matcher {
                            label: label.clone(),
                            op: op.clone(),
                            value,
                        });
                        i += 3;
                    }
                    _ if tokens.get(i) == Some(&Token::Punct("}".into())) => {}
                    _ => return Err(format!("bad selector for {name} in {expr:?}")),
                }
                match tokens.get(i) {
                    Some(Token::Punct(p)) if p == "," => i += 1,
                    Some(Token::Punct(p)) if p == "}" => {
                        i += 1;
                        break;
                    }
                    _ => return Err(format!("unclosed selector for {name} in {expr:?}")),
                }
            }
        }
        out.push(sel);
    }
    Ok(out)
}

/// A scrape: each sample name with the label sets of its series.
#[derive(Debug, Default)]
pub struct Exposition {
    series: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

impl Exposition {
    /// Parses the text format (comments skipped; values are not needed).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut e = Self::default();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let end = line.find(['{', ' ']).ok_or(format!("bad line {line:?}"))?;
            let mut labels = BTreeMap::new();
            if line[end..].starts_with('{') {
                let tokens = tokenize(&line[end..])?;
                for t in tokens.windows(3) {
                    if let [Token::Ident(l), Token::Punct(eq), Token::Str(v)] = t {
                        if eq == "=" {
                            labels.insert(l.clone(), v.clone());
                        }
                    }
                }
            }
            e.series
                .entry(line[..end].to_string())
                .or_default()
                .push(labels);
        }
        Ok(e)
    }

    /// The sample names.
    pub fn names(&self) -> BTreeSet<&str> {
        self.series.keys().map(String::as_str).collect()
    }

    /// Whether some series of `metric` has `label` (Prometheus' target labels always count).
    pub fn has_label(&self, metric: &str, label: &str) -> bool {
        TARGET_LABELS.contains(&label) || self.values(metric, label).next().is_some()
    }

    fn values<'a>(&'a self, metric: &str, label: &'a str) -> impl Iterator<Item = &'a str> {
        self.series
            .get(metric)
            .into_iter()
            .flatten()
            .filter_map(move |l| l.get(label).map(String::as_str))
    }

    /// What in `expr` does not match this scrape: unknown metrics, labels a metric does not
    /// have, and literal values (an `=` value, or each alternative of a `=~` that is only
    /// words joined by `|`) that no series of it has. Empty when all is well.
    pub fn problems(&self, expr: &str) -> Vec<String> {
        let sels = match selectors(expr) {
            Ok(s) if s.is_empty() => return vec![format!("no fulcrum_ metric in {expr:?}")],
            Ok(s) => s,
            Err(e) => return vec![e],
        };
        let mut out = Vec::new();
        for s in sels {
            if !self.series.contains_key(&s.metric) {
                out.push(format!("unknown metric {}", s.metric));
                continue;
            }
            for m in &s.matchers {
                if !self.has_label(&s.metric, &m.label) {
                    out.push(format!("{} has no label {}", s.metric, m.label));
                    continue;
                }
                let Some(value) = m.value.as_deref() else {
                    continue;
                };
                if TARGET_LABELS.contains(&m.label.as_str()) || value.is_empty() {
                    continue;
                }
                let wanted: Vec<&str> = match m.op.as_str() {
                    "=" => vec![value],
                    "=~" if value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_|".contains(c)) =>
                    {
                        value.split('|').collect()
                    }
                    _ => vec![],
                };
                for w in wanted {
                    if !self.values(&s.metric, &m.label).any(|v| v == w) {
                        out.push(format!(
                            "no {}{{{}=\"{w}\"}} in the scrape",
                            s.metric, m.label
                        ));
                    }
                }
            }
        }
        out
    }
}
