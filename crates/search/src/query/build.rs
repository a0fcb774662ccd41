//! Compiles the query AST into tantivy queries over Larder's index schema.
//!
//! `content` holds whitespace tokens (`key__=__value`), so a term is one exact token, a phrase is
//! consecutive tokens, and a wildcard is a range of the term dictionary when it is a literal
//! prefix with one trailing `*` (Chef's `name__=__web*`), otherwise a regex over the dictionary.
//! The keyword fields match their whole value exactly.

use super::{Ast, Occur, Pat, QueryError};
use crate::index::Fields;
use std::ops::Bound;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, EmptyQuery, FuzzyTermQuery, InvertedIndexRangeQuery,
    Occur as TOccur, PhraseQuery, Query, RangeQuery, RegexQuery, TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::Term;

type Q = Box<dyn Query>;

/// Where a (named or default) field resolves to.
#[derive(Clone, Copy)]
enum Target {
    Content(Field),
    Keyword(Field),
    /// A field the index does not have: matches nothing, like an unmapped field in ES.
    Unknown,
}

pub fn build(ast: &Ast, fields: &Fields) -> Result<Q, QueryError> {
    Ok(match ast {
        Ast::All => Box::new(AllQuery),
        Ast::Nothing => Box::new(EmptyQuery),
        Ast::Term { field, text } => per_field(fields, field, |t| term(t, text))?,
        Ast::Phrase { field, text, slop } => per_field(fields, field, |t| phrase(t, text, *slop))?,
        Ast::Wildcard { field, pattern } => per_field(fields, field, |t| wildcard(t, pattern))?,
        Ast::Fuzzy {
            field,
            text,
            distance,
        } => per_field(fields, field, |t| {
            Ok(match t {
                Target::Content(f) | Target::Keyword(f) => Box::new(FuzzyTermQuery::new(
                    Term::from_field_text(f, text),
                    *distance,
                    true,
                )) as Q,
                Target::Unknown => Box::new(EmptyQuery),
            })
        })?,
        Ast::Range {
            field,
            lower,
            upper,
        } => per_field(fields, field, |t| range(t, lower, upper))?,
        Ast::Exists { field } => match resolve(fields, field) {
            // Every document carries content; enumerating all content tokens would be costly.
            Target::Content(_) => Box::new(AllQuery),
            Target::Keyword(f) => regex(f, ".*")?,
            Target::Unknown => Box::new(EmptyQuery),
        },
        Ast::Bool(items) => {
            let mut clauses: Vec<(TOccur, Q)> = Vec::with_capacity(items.len() + 1);
            for (occ, a) in items {
                let o = match occ {
                    Occur::Must => TOccur::Must,
                    Occur::Should => TOccur::Should,
                    Occur::MustNot => TOccur::MustNot,
                };
                clauses.push((o, build(a, fields)?));
            }
            if clauses.is_empty() {
                return Ok(Box::new(EmptyQuery));
            }
            // A purely negative query means "everything except": give it something to subtract from.
            if clauses.iter().all(|(o, _)| *o == TOccur::MustNot) {
                clauses.push((TOccur::Must, Box::new(AllQuery)));
            }
            Box::new(BooleanQuery::new(clauses))
        }
        Ast::Boost(inner, b) => Box::new(BoostQuery::new(build(inner, fields)?, *b)),
    })
}

fn resolve(fields: &Fields, name: &str) -> Target {
    if name == "content" {
        return Target::Content(fields.content);
    }
    match fields.keyword(name) {
        Some(f) => Target::Keyword(f),
        None => Target::Unknown,
    }
}

/// Applies `f` to the named field, or ORs it over every field when the query names none.
fn per_field(
    fields: &Fields,
    field: &Option<String>,
    f: impl Fn(Target) -> Result<Q, QueryError>,
) -> Result<Q, QueryError> {
    match field {
        Some(name) => f(resolve(fields, name)),
        None => {
            let mut clauses = vec![(TOccur::Should, f(Target::Content(fields.content))?)];
            for k in fields.keywords() {
                clauses.push((TOccur::Should, f(Target::Keyword(k))?));
            }
            Ok(Box::new(BooleanQuery::new(clauses)))
        }
    }
}

fn term(t: Target, text: &str) -> Result<Q, QueryError> {
    match t {
        // The whitespace analyzer would split a term holding (escaped) blanks into tokens.
        Target::Content(_) if text.split_whitespace().count() != 1 => phrase(t, text, 0),
        Target::Content(f) | Target::Keyword(f) => Ok(Box::new(TermQuery::new(
            Term::from_field_text(f, text),
            IndexRecordOption::Basic,
        ))),
        Target::Unknown => Ok(Box::new(EmptyQuery)),
    }
}

fn phrase(t: Target, text: &str, slop: u32) -> Result<Q, QueryError> {
    match t {
        Target::Content(f) => {
            let words: Vec<Term> = text
                .split_whitespace()
                .map(|w| Term::from_field_text(f, w))
                .collect();
            Ok(match words.len() {
                0 => Box::new(EmptyQuery),
                1 => Box::new(TermQuery::new(words[0].clone(), IndexRecordOption::Basic)),
                _ => {
                    let mut p = PhraseQuery::new(words);
                    p.set_slop(slop);
                    Box::new(p)
                }
            })
        }
        Target::Keyword(f) => Ok(Box::new(TermQuery::new(
            Term::from_field_text(f, text),
            IndexRecordOption::Basic,
        ))),
        Target::Unknown => Ok(Box::new(EmptyQuery)),
    }
}

fn wildcard(t: Target, pattern: &[Pat]) -> Result<Q, QueryError> {
    let f = match t {
        Target::Content(f) => {
            // A single token never contains blanks.
            if pattern
                .iter()
                .any(|p| matches!(p, Pat::Lit(c) if c.is_whitespace()))
            {
                return Ok(Box::new(EmptyQuery));
            }
            f
        }
        Target::Keyword(f) => f,
        Target::Unknown => return Ok(Box::new(EmptyQuery)),
    };
    if let Some(prefix) = literal_prefix(pattern) {
        return Ok(prefix_query(f, &prefix));
    }
    let mut re = String::with_capacity(pattern.len() + 8);
    for p in pattern {
        match p {
            Pat::Star => re.push_str(".*"),
            Pat::One => re.push('.'),
            Pat::Lit(c) => {
                if "\\.+*?()|[]{}^$#&-~".contains(*c) {
                    re.push('\\');
                }
                re.push(*c);
            }
        }
    }
    regex(f, &re)
}

/// The literal part of a pattern that is literal characters followed by one trailing `*`
/// (Chef's usual `name__=__web*`); `None` for any other shape.
fn literal_prefix(pattern: &[Pat]) -> Option<String> {
    let (last, lits) = pattern.split_last()?;
    if !matches!(last, Pat::Star) || lits.is_empty() {
        return None;
    }
    lits.iter()
        .map(|p| match p {
            Pat::Lit(c) => Some(*c),
            _ => None,
        })
        .collect()
}

/// Every term starting with `prefix`: the term-dictionary range `[prefix, prefix+1)`, where
/// `prefix+1` is the smallest byte string greater than every string with that prefix. Same
/// matches as the regex `prefix.*`, without running an automaton over each term's bytes.
pub fn prefix_query(f: Field, prefix: &str) -> Q {
    let mut upper = prefix.as_bytes().to_vec();
    while upper.last() == Some(&0xff) {
        upper.pop();
    }
    let upper = match upper.last_mut() {
        Some(b) => {
            *b += 1;
            Bound::Excluded(Term::from_field_bytes(f, &upper))
        }
        None => Bound::Unbounded,
    };
    Box::new(InvertedIndexRangeQuery::new(
        Bound::Included(Term::from_field_text(f, prefix)),
        upper,
    ))
}

fn regex(f: Field, re: &str) -> Result<Q, QueryError> {
    RegexQuery::from_pattern(re, f)
        .map(|q| Box::new(q) as Q)
        .map_err(|e| QueryError(format!("invalid wildcard pattern: {e}")))
}

fn range(t: Target, lower: &Bound<String>, upper: &Bound<String>) -> Result<Q, QueryError> {
    let f = match t {
        Target::Content(f) | Target::Keyword(f) => f,
        Target::Unknown => return Ok(Box::new(EmptyQuery)),
    };
    let conv = |b: &Bound<String>| match b {
        Bound::Included(v) => Bound::Included(Term::from_field_text(f, v)),
        Bound::Excluded(v) => Bound::Excluded(Term::from_field_text(f, v)),
        Bound::Unbounded => Bound::Unbounded,
    };
    if matches!((lower, upper), (Bound::Unbounded, Bound::Unbounded)) {
        return Ok(match t {
            Target::Content(_) => Box::new(AllQuery),
            _ => regex(f, ".*")?,
        });
    }
    Ok(Box::new(RangeQuery::new(conv(lower), conv(upper))))
}
