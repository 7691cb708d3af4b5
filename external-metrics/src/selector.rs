//! Kubernetes label selectors in their string form (`a=b,c!=d,e in (x,y),!f,g`), as the HPA sends
//! them in `?labelSelector=`: parsing with the grammar and error cases of apimachinery's
//! `labels.Parse`, matching against a metric's labels, and printing back. Nothing here does I/O.

use bucket_av_core::labels::{is_dns_subdomain, is_label_value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// A parsed label selector: a conjunction of requirements. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// One requirement of a selector, such as `queue in (a,b)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// One value for `=`, `!=`, `>` and `<`, one or more for `in`/`notin`, none for exists/`!`.
    pub values: BTreeSet<String>,
}

/// The operators of the selector syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `key=value` or `key==value`.
    Equals,
    /// `key!=value`: also true when the label is absent.
    NotEquals,
    /// `key in (a,b)`.
    In,
    /// `key notin (a,b)`: also true when the label is absent.
    NotIn,
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
    /// `key>5`: the label is an integer greater than the value.
    GreaterThan,
    /// `key<5`: the label is an integer less than the value.
    LessThan,
}

/// Why a selector string was refused; the message names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

impl LabelSelector {
    /// The selector that matches every set of labels (what an absent `labelSelector` means).
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses the string form; an empty or all-blank string is [`LabelSelector::everything`].
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let error = |reason: String| SelectorError { selector: selector.to_owned(), reason };
        let tokens = lex(selector).map_err(error)?;
        Parser { tokens, position: 0 }.parse().map_err(error)
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value a selector pins `key` to with `key=value` (or `key in (value)`), if it does:
    /// what a source usually wants ("which queue?").
    pub fn exact_value(&self, key: &str) -> Option<&str> {
        self.requirements.iter().find_map(|requirement| match requirement.operator {
            Operator::Equals | Operator::In if requirement.key == key && requirement.values.len() == 1 => {
                requirement.values.iter().next().map(String::as_str)
            }
            _ => None,
        })
    }

    /// Whether every requirement holds for `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|requirement| requirement.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::Equals | Operator::In => value.is_some_and(|value| self.values.contains(value)),
            Operator::NotEquals | Operator::NotIn => value.is_none_or(|value| !self.values.contains(value)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(actual), Some(bound)) = (
                    value.and_then(|value| value.parse::<i64>().ok()),
                    self.values.iter().next().and_then(|value| value.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan { actual > bound } else { actual < bound }
            }
        }
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(selector: &str) -> Result<Self, Self::Err> {
        Self::parse(selector)
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, requirement) in self.requirements.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.values.iter().next().map(String::as_str).unwrap_or_default();
        let set = self.values.iter().map(String::as_str).collect::<Vec<_>>().join(",");
        match self.operator {
            Operator::Equals => write!(f, "{}={first}", self.key),
            Operator::NotEquals => write!(f, "{}!={first}", self.key),
            Operator::In => write!(f, "{} in ({set})", self.key),
            Operator::NotIn => write!(f, "{} notin ({set})", self.key),
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::GreaterThan => write!(f, "{}>{first}", self.key),
            Operator::LessThan => write!(f, "{}<{first}", self.key),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Identifier(String),
    In,
    NotIn,
    /// `!`
    Bang,
    Equals,
    DoubleEquals,
    NotEquals,
    GreaterThan,
    LessThan,
    Comma,
    OpenParen,
    CloseParen,
}

impl Token {
    fn describe(token: Option<&Token>) -> String {
        match token {
            None => "end of string".to_owned(),
            Some(Token::Identifier(name)) => format!("'{name}'"),
            Some(Token::In) => "'in'".to_owned(),
            Some(Token::NotIn) => "'notin'".to_owned(),
            Some(Token::Bang) => "'!'".to_owned(),
            Some(Token::Equals) => "'='".to_owned(),
            Some(Token::DoubleEquals) => "'=='".to_owned(),
            Some(Token::NotEquals) => "'!='".to_owned(),
            Some(Token::GreaterThan) => "'>'".to_owned(),
            Some(Token::LessThan) => "'<'".to_owned(),
            Some(Token::Comma) => "','".to_owned(),
            Some(Token::OpenParen) => "'('".to_owned(),
            Some(Token::CloseParen) => "')'".to_owned(),
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

/// Splits like apimachinery's lexer: runs of non-blank, non-special characters are identifiers
/// (`in`/`notin` are keywords), `!=` and `==` are single tokens.
fn lex(input: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if is_special(c) {
            chars.next();
            let token = match (c, chars.peek()) {
                ('!', Some('=')) => {
                    chars.next();
                    Token::NotEquals
                }
                ('=', Some('=')) => {
                    chars.next();
                    Token::DoubleEquals
                }
                ('!', _) => Token::Bang,
                ('=', _) => Token::Equals,
                ('(', _) => Token::OpenParen,
                (')', _) => Token::CloseParen,
                (',', _) => Token::Comma,
                ('>', _) => Token::GreaterThan,
                ('<', _) => Token::LessThan,
                _ => return Err(format!("unexpected character {c:?}")),
            };
            tokens.push(token);
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || is_special(c) {
                    break;
                }
                word.push(c);
                chars.next();
            }
            tokens.push(match word.as_str() {
                "in" => Token::In,
                "notin" => Token::NotIn,
                _ => Token::Identifier(word),
            });
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    /// In value position the keywords are ordinary words: `a=in` selects the value "in".
    fn next_value(&mut self) -> Option<Token> {
        match self.next() {
            Some(Token::In) => Some(Token::Identifier("in".to_owned())),
            Some(Token::NotIn) => Some(Token::Identifier("notin".to_owned())),
            other => other,
        }
    }

    fn parse(mut self) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        if self.peek().is_none() {
            return Ok(LabelSelector { requirements });
        }
        loop {
            requirements.push(self.requirement()?);
            match self.next() {
                None => break,
                Some(Token::Comma) if self.peek().is_some() => {}
                Some(Token::Comma) => return Err("expected a requirement after ','".to_owned()),
                other => {
                    return Err(format!("found {}, expected ',' or end of string", Token::describe(other.as_ref())));
                }
            }
        }
        Ok(LabelSelector { requirements })
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let mut token = self.next_value();
        let negated = token == Some(Token::Bang);
        if negated {
            token = self.next_value();
        }
        let key = match token {
            Some(Token::Identifier(key)) => key,
            other => return Err(format!("found {}, expected a label key", Token::describe(other.as_ref()))),
        };
        validate_key(&key)?;
        let at_end = matches!(self.peek(), None | Some(Token::Comma));
        if negated || at_end {
            let operator = if negated { Operator::DoesNotExist } else { Operator::Exists };
            return Ok(Requirement { key, operator, values: BTreeSet::new() });
        }
        let operator = match self.next() {
            Some(Token::Equals | Token::DoubleEquals) => Operator::Equals,
            Some(Token::NotEquals) => Operator::NotEquals,
            Some(Token::In) => Operator::In,
            Some(Token::NotIn) => Operator::NotIn,
            Some(Token::GreaterThan) => Operator::GreaterThan,
            Some(Token::LessThan) => Operator::LessThan,
            other => {
                return Err(format!(
                    "found {} after key {key:?}, expected one of =, ==, !=, in, notin, >, <",
                    Token::describe(other.as_ref())
                ));
            }
        };
        let values = match operator {
            Operator::In | Operator::NotIn => self.value_set()?,
            _ => BTreeSet::from([self.exact_value()?]),
        };
        if matches!(operator, Operator::GreaterThan | Operator::LessThan) {
            let value = values.iter().next().map(String::as_str).unwrap_or_default();
            if value.parse::<i64>().is_err() {
                return Err(format!("the value of {key:?} after > or < must be an integer, not {value:?}"));
            }
        }
        Ok(Requirement { key, operator, values })
    }

    fn exact_value(&mut self) -> Result<String, String> {
        if matches!(self.peek(), None | Some(Token::Comma)) {
            return Ok(String::new());
        }
        match self.next_value() {
            Some(Token::Identifier(value)) => validate_value(&value).map(|()| value),
            other => Err(format!("found {}, expected a label value", Token::describe(other.as_ref()))),
        }
    }

    /// `( v1, v2 )`; like apimachinery, `()` and empty members stand for the empty value.
    fn value_set(&mut self) -> Result<BTreeSet<String>, String> {
        match self.next() {
            Some(Token::OpenParen) => {}
            other => return Err(format!("found {}, expected '('", Token::describe(other.as_ref()))),
        }
        let mut values = BTreeSet::new();
        let mut current = String::new();
        loop {
            match self.next_value() {
                Some(Token::Identifier(value)) if current.is_empty() => current = value,
                Some(Token::Comma) => {
                    validate_value(&current)?;
                    values.insert(std::mem::take(&mut current));
                }
                Some(Token::CloseParen) => {
                    validate_value(&current)?;
                    values.insert(current);
                    return Ok(values);
                }
                other => {
                    return Err(format!(
                        "found {} in a value list, expected a value, ',' or ')'",
                        Token::describe(other.as_ref())
                    ));
                }
            }
        }
    }
}

/// A qualified name: an optional DNS-subdomain prefix and `/`, then a name of up to 63
/// characters of `[A-Za-z0-9_.-]` that starts and ends alphanumeric.
fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if prefix.is_some_and(|prefix| !is_dns_subdomain(prefix)) {
        return Err(format!("label key {key:?} has an invalid prefix: it must be a lowercase DNS subdomain"));
    }
    if name.is_empty() || !is_label_value(name) {
        return Err(format!(
            "invalid label key {key:?}: the name part must be 1-63 characters of [A-Za-z0-9_.-], \
             starting and ending alphanumeric"
        ));
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_value(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: it must be at most 63 characters of [A-Za-z0-9_.-], \
             starting and ending alphanumeric"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn parse(selector: &str) -> LabelSelector {
        LabelSelector::parse(selector).unwrap_or_else(|error| panic!("{error}"))
    }

    fn reason(selector: &str) -> String {
        LabelSelector::parse(selector).expect_err(selector).reason
    }

    #[test]
    fn empty_and_blank_selectors_match_everything() {
        for selector in ["", "   "] {
            let parsed = parse(selector);
            assert!(parsed.is_everything());
            assert!(parsed.matches(&labels(&[])));
            assert!(parsed.matches(&labels(&[("a", "b")])));
        }
    }

    #[test]
    fn the_example_from_the_brief_parses_into_five_requirements() {
        let parsed = parse("a=b,c!=d,e in (x,y),!f,g");
        let ops: Vec<_> = parsed.requirements().iter().map(|r| (r.key.as_str(), r.operator)).collect();
        assert_eq!(
            ops,
            [
                ("a", Operator::Equals),
                ("c", Operator::NotEquals),
                ("e", Operator::In),
                ("f", Operator::DoesNotExist),
                ("g", Operator::Exists),
            ]
        );
        assert_eq!(parsed.requirements()[2].values, BTreeSet::from(["x".to_owned(), "y".to_owned()]));
        assert!(parsed.matches(&labels(&[("a", "b"), ("e", "y"), ("g", "")])));
        assert!(parsed.matches(&labels(&[("a", "b"), ("c", "z"), ("e", "x"), ("g", "1")])));
        assert!(!parsed.matches(&labels(&[("a", "b"), ("c", "d"), ("e", "x"), ("g", "1")])), "c!=d");
        assert!(!parsed.matches(&labels(&[("a", "b"), ("e", "z"), ("g", "1")])), "e in (x,y)");
        assert!(!parsed.matches(&labels(&[("a", "b"), ("e", "x"), ("f", "1"), ("g", "1")])), "!f");
        assert!(!parsed.matches(&labels(&[("a", "b"), ("e", "x")])), "g");
        assert!(!parsed.matches(&labels(&[("a", "c"), ("e", "x"), ("g", "1")])), "a=b");
    }

    #[test]
    fn double_equals_is_equals_and_whitespace_is_ignored() {
        assert_eq!(parse("a==b"), parse("a=b"));
        assert_eq!(parse("  a = b ,  c  in(x , y)  "), parse("a=b,c in (x,y)"));
    }

    #[test]
    fn not_equals_and_notin_hold_when_the_label_is_absent() {
        assert!(parse("a!=b").matches(&labels(&[])));
        assert!(parse("a notin (b,c)").matches(&labels(&[])));
        assert!(parse("a notin (b,c)").matches(&labels(&[("a", "d")])));
        assert!(!parse("a notin (b,c)").matches(&labels(&[("a", "c")])));
    }

    #[test]
    fn equals_and_in_need_the_label() {
        assert!(!parse("a=b").matches(&labels(&[])));
        assert!(!parse("a in (b)").matches(&labels(&[])));
    }

    #[test]
    fn empty_values_are_allowed_like_in_apimachinery() {
        let parsed = parse("a=,b in (),c in (x,)");
        assert!(parsed.matches(&labels(&[("a", ""), ("b", ""), ("c", "")])));
        assert!(!parsed.matches(&labels(&[("b", ""), ("c", "")])));
        assert_eq!(parsed.requirements()[1].values, BTreeSet::from([String::new()]));
        assert_eq!(parsed.requirements()[2].values, BTreeSet::from([String::new(), "x".to_owned()]));
    }

    #[test]
    fn keywords_are_plain_words_in_value_position() {
        assert!(parse("a=in").matches(&labels(&[("a", "in")])));
        assert!(parse("a in (in,notin)").matches(&labels(&[("a", "notin")])));
    }

    #[test]
    fn greater_and_less_than_compare_integers() {
        let parsed = parse("n>5,n<10");
        assert!(parsed.matches(&labels(&[("n", "7")])));
        assert!(!parsed.matches(&labels(&[("n", "5")])));
        assert!(!parsed.matches(&labels(&[("n", "10")])));
        assert!(!parsed.matches(&labels(&[("n", "seven")])));
        assert!(!parsed.matches(&labels(&[])));
        assert!(reason("n>five").contains("must be an integer"));
    }

    #[test]
    fn prefixed_keys_are_accepted() {
        let parsed = parse("bucket-av.example.com/queue=scan-a,app.kubernetes.io/name");
        assert!(parsed.matches(&labels(&[("bucket-av.example.com/queue", "scan-a"), ("app.kubernetes.io/name", "x")])));
    }

    #[test]
    fn exact_value_finds_the_pinned_value() {
        let parsed = parse("queue=scan-a,tier in (x),multi in (a,b),other!=q");
        assert_eq!(parsed.exact_value("queue"), Some("scan-a"));
        assert_eq!(parsed.exact_value("tier"), Some("x"));
        assert_eq!(parsed.exact_value("multi"), None);
        assert_eq!(parsed.exact_value("other"), None);
        assert_eq!(parsed.exact_value("absent"), None);
    }

    #[test]
    fn display_prints_a_selector_that_parses_back_to_the_same() {
        for selector in ["a=b,c!=d,e in (x,y),!f,g", "e notin (x,y),n>3,n<9", "a=,b in ()"] {
            let parsed = parse(selector);
            assert_eq!(parse(&parsed.to_string()), parsed, "{selector} printed as {parsed}");
        }
        assert_eq!(parse("a==b, e in (y,x)").to_string(), "a=b,e in (x,y)");
    }

    #[test]
    fn malformed_selectors_are_refused_with_the_reason() {
        assert!(reason("a=b,").contains("after ','"));
        assert!(reason(",a").contains("expected a label key"));
        assert!(reason("a b").contains("expected one of"));
        assert!(reason("a in x").contains("expected '('"));
        assert!(reason("a in (x").contains("end of string"));
        assert!(reason("a in (x y)").contains("in a value list"));
        assert!(reason("!a=b").contains("expected ',' or end of string"));
        assert!(reason("a=b=c").contains("expected ',' or end of string"));
        assert!(reason("=b").contains("expected a label key"));
        assert!(reason("a=(b)").contains("expected a label value"));
        assert!(reason("-a=b").contains("invalid label key"));
        assert!(reason("a=-b").contains("invalid label value"));
        assert!(reason("Example.com/a=b").contains("invalid prefix"));
        assert!(reason(&format!("a={}", "x".repeat(64))).contains("invalid label value"));
        let error = LabelSelector::parse("a b").expect_err("invalid");
        assert!(error.to_string().starts_with("invalid label selector \"a b\": "), "{error}");
    }
}
