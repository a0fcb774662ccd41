//! Query language: the Lucene syntax Chef sends (after its own rewriting) and the ES JSON DSL
//! around it, both turned into one small AST that `build` compiles to tantivy queries.
//!
//! We parse ourselves because tantivy's QueryParser neither expands wildcards nor accepts pure
//! negative queries, and both are everyday Chef searches.

pub mod build;
pub mod dsl;
pub mod parser;

use std::ops::Bound;

/// How a clause takes part in a boolean query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occur {
    Must,
    Should,
    MustNot,
}

/// A piece of a wildcard pattern.
#[derive(Debug, Clone, PartialEq)]
pub enum Pat {
    Lit(char),
    /// `*`: any run of characters.
    Star,
    /// `?`: exactly one character.
    One,
}

/// The parsed query. `field: None` means "every field" (ES's default `*`).
#[derive(Debug, Clone, PartialEq)]
pub enum Ast {
    All,
    Nothing,
    Term {
        field: Option<String>,
        text: String,
    },
    Wildcard {
        field: Option<String>,
        pattern: Vec<Pat>,
    },
    Fuzzy {
        field: Option<String>,
        text: String,
        distance: u8,
    },
    Phrase {
        field: Option<String>,
        text: String,
        slop: u32,
    },
    Range {
        field: Option<String>,
        lower: Bound<String>,
        upper: Bound<String>,
    },
    Exists {
        field: String,
    },
    Bool(Vec<(Occur, Ast)>),
    Boost(Box<Ast>, f32),
}

/// A query the client got wrong: answered 400, never 500.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);
