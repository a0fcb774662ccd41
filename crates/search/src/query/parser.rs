//! Recursive-descent parser for Lucene query syntax (as accepted by ES `query_string`).
//!
//! Grammar (lowest to highest precedence):
//! ```text
//! or    := and ( ("OR" | "||")? and )*          -- juxtaposition is OR (default operator)
//! and   := unary ( ("AND" | "&&") unary )*
//! unary := ("NOT" | "!") unary | ("+" | "-") primary | primary
//! primary := "(" or ")" boost? | field ":" value | value
//! value := "(" or ")" | phrase ("~" n)? | range | term ("~" n?)?   followed by ("^" n)?
//! ```
//! Unlike Lucene's classic parser, AND binds tighter than OR (`a OR b AND c` = `a OR (b AND c)`),
//! which is what people mean; Chef itself only ever combines clauses with AND or `+`.
//! `/` is an ordinary term character (Chef values are full of paths); regex terms are not
//! supported.

use super::{Ast, Occur, Pat, QueryError};
use std::ops::Bound;

/// Parses a query string. An empty (or all-blank) query matches nothing, as in ES.
pub fn parse(input: &str) -> Result<Ast, QueryError> {
    parse_with_default_field(input, None)
}

/// Like [`parse`], with bare terms searching `default_field` instead of every field.
pub fn parse_with_default_field(
    input: &str,
    default_field: Option<&str>,
) -> Result<Ast, QueryError> {
    let mut p = Parser {
        s: input.chars().collect(),
        i: 0,
        depth: 0,
    };
    let ast = p.or(default_field)?;
    p.ws();
    if p.i < p.s.len() {
        return Err(p.err("unexpected character"));
    }
    Ok(ast)
}

struct Parser {
    s: Vec<char>,
    i: usize,
    depth: usize,
}

/// Characters that end a bare term unless escaped.
fn is_term_stop(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | '{' | '}' | '"' | ':' | '^' | '~')
}

impl Parser {
    fn err(&self, what: &str) -> QueryError {
        let near: String = self.s[self.i.min(self.s.len())..].iter().take(20).collect();
        QueryError(format!(
            "Cannot parse query: {what} at position {} (near '{near}')",
            self.i
        ))
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.i += 1;
        }
    }

    /// True when a bare keyword (AND/OR/NOT) starts here, followed by a boundary.
    fn keyword(&self, kw: &str) -> bool {
        let n = kw.len();
        if self.i + n > self.s.len() || self.s[self.i..self.i + n].iter().copied().ne(kw.chars()) {
            return false;
        }
        match self.s.get(self.i + n) {
            None => true,
            Some(c) => {
                c.is_whitespace()
                    || *c == '('
                    || (kw == "NOT" && matches!(c, '"' | '+' | '-' | '!'))
            }
        }
    }

    fn symbol(&self, sym: &str) -> bool {
        let n = sym.len();
        self.i + n <= self.s.len() && self.s[self.i..self.i + n].iter().copied().eq(sym.chars())
    }

    fn at_group_end(&self) -> bool {
        self.peek().is_none() || self.peek() == Some(')')
    }

    fn or(&mut self, field: Option<&str>) -> Result<Ast, QueryError> {
        self.depth += 1;
        if self.depth > 200 {
            return Err(self.err("query nested too deeply"));
        }
        let mut items: Vec<(Occur, Ast)> = Vec::new();
        loop {
            self.ws();
            if self.at_group_end() {
                break;
            }
            if !items.is_empty() {
                if self.keyword("OR") {
                    self.i += 2;
                    self.ws();
                    if self.at_group_end() {
                        return Err(self.err("OR without a right operand"));
                    }
                } else if self.symbol("||") {
                    self.i += 2;
                    self.ws();
                    if self.at_group_end() {
                        return Err(self.err("|| without a right operand"));
                    }
                }
            } else if self.keyword("OR")
                || self.keyword("AND")
                || self.symbol("||")
                || self.symbol("&&")
            {
                return Err(self.err("operator without a left operand"));
            }
            items.push(self.and(field)?);
        }
        self.depth -= 1;
        Ok(match items.len() {
            0 => Ast::Nothing,
            1 if items[0].0 == Occur::Should => items.pop().map(|x| x.1).unwrap_or(Ast::Nothing),
            _ => Ast::Bool(items),
        })
    }

    fn and(&mut self, field: Option<&str>) -> Result<(Occur, Ast), QueryError> {
        let mut items = vec![self.unary(field)?];
        loop {
            let save = self.i;
            self.ws();
            let n = if self.keyword("AND") {
                3
            } else if self.symbol("&&") {
                2
            } else {
                self.i = save;
                break;
            };
            self.i += n;
            self.ws();
            if self.at_group_end() {
                return Err(self.err("AND without a right operand"));
            }
            items.push(self.unary(field)?);
        }
        if items.len() == 1 {
            return Ok(items.pop().expect("one item"));
        }
        let clauses = items
            .into_iter()
            .map(|(o, a)| {
                (
                    if o == Occur::MustNot {
                        Occur::MustNot
                    } else {
                        Occur::Must
                    },
                    a,
                )
            })
            .collect();
        Ok((Occur::Should, Ast::Bool(clauses)))
    }

    fn unary(&mut self, field: Option<&str>) -> Result<(Occur, Ast), QueryError> {
        self.ws();
        if self.keyword("NOT") || self.peek() == Some('!') {
            self.i += if self.peek() == Some('!') { 1 } else { 3 };
            self.ws();
            if self.at_group_end() {
                return Err(self.err("NOT without an operand"));
            }
            let (occ, inner) = self.unary(field)?;
            let inner = if occ == Occur::Should {
                inner
            } else {
                Ast::Bool(vec![(occ, inner)])
            };
            return Ok((Occur::MustNot, inner));
        }
        match self.peek() {
            Some('+') => {
                self.i += 1;
                Ok((Occur::Must, self.primary(field)?))
            }
            Some('-') => {
                self.i += 1;
                Ok((Occur::MustNot, self.primary(field)?))
            }
            _ => Ok((Occur::Should, self.primary(field)?)),
        }
    }

    fn primary(&mut self, field: Option<&str>) -> Result<Ast, QueryError> {
        match self.peek() {
            None => Err(self.err("missing term")),
            Some('(') | Some('"') | Some('[') | Some('{') => self.value(field),
            Some(c) if is_term_stop(c) => Err(self.err("unexpected character")),
            Some(_) => {
                let start = self.i;
                let tok = self.term_chars();
                if self.peek() == Some(':') {
                    self.i += 1;
                    let name: String = tok.iter().map(|(c, _)| *c).collect();
                    if name.is_empty() {
                        return Err(self.err("empty field name"));
                    }
                    if matches!(self.peek(), None | Some(' ' | '\t' | '\n' | '\r')) {
                        return Err(self.err("missing value after field"));
                    }
                    if name == "_exists_" {
                        let v = self.term_chars();
                        if v.is_empty() {
                            return Err(self.err("_exists_ needs a field name"));
                        }
                        return Ok(Ast::Exists {
                            field: v.iter().map(|(c, _)| *c).collect(),
                        });
                    }
                    let f = if name == "*" { None } else { Some(name) };
                    if tok.len() == 1 && !tok[0].1 && tok[0].0 == '*' {
                        // `*:*` (and `*:x`, which searches every field)
                        return self.value_in_all(f);
                    }
                    return self.value(f.as_deref());
                }
                self.i = start;
                self.value(field)
            }
        }
    }

    fn value_in_all(&mut self, field: Option<String>) -> Result<Ast, QueryError> {
        if self.peek() == Some('*') {
            let save = self.i;
            self.i += 1;
            if self.peek().is_none_or(|c| c.is_whitespace() || c == ')') {
                return Ok(Ast::All);
            }
            self.i = save;
        }
        self.value(field.as_deref())
    }

    /// Reads term characters, resolving backslash escapes; each char carries "was escaped".
    fn term_chars(&mut self) -> Vec<(char, bool)> {
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            if c == '\\' {
                if let Some(n) = self.s.get(self.i + 1) {
                    out.push((*n, true));
                    self.i += 2;
                    continue;
                }
                // A trailing lone backslash: keep it literally.
                out.push(('\\', true));
                self.i += 1;
                continue;
            }
            if is_term_stop(c) {
                break;
            }
            out.push((c, false));
            self.i += 1;
        }
        out
    }

    fn number(&mut self) -> Option<f32> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
            self.i += 1;
        }
        if start == self.i {
            return None;
        }
        self.s[start..self.i]
            .iter()
            .collect::<String>()
            .parse()
            .ok()
    }

    fn boost(&mut self, ast: Ast) -> Result<Ast, QueryError> {
        if self.peek() == Some('^') {
            self.i += 1;
            let b = self
                .number()
                .ok_or_else(|| self.err("boost needs a number"))?;
            return Ok(Ast::Boost(Box::new(ast), b));
        }
        Ok(ast)
    }

    fn value(&mut self, field: Option<&str>) -> Result<Ast, QueryError> {
        let f = || field.map(str::to_string);
        let ast = match self.peek() {
            Some('(') => {
                self.i += 1;
                let inner = self.or(field)?;
                self.ws();
                if self.peek() != Some(')') {
                    return Err(self.err("missing closing parenthesis"));
                }
                self.i += 1;
                inner
            }
            Some('"') => {
                self.i += 1;
                let mut text = String::new();
                loop {
                    match self.peek() {
                        None => return Err(self.err("unterminated phrase")),
                        Some('"') => break,
                        Some('\\') if self.i + 1 < self.s.len() => {
                            text.push(self.s[self.i + 1]);
                            self.i += 2;
                        }
                        Some(c) => {
                            text.push(c);
                            self.i += 1;
                        }
                    }
                }
                self.i += 1;
                let mut slop = 0;
                if self.peek() == Some('~') {
                    self.i += 1;
                    slop = self.number().map(|n| n as u32).unwrap_or(0);
                }
                Ast::Phrase {
                    field: f(),
                    text,
                    slop,
                }
            }
            Some(open @ ('[' | '{')) => {
                self.i += 1;
                let lo = self.range_end()?;
                self.ws();
                if !(self.symbol("TO") && self.s.get(self.i + 2).is_some_and(|c| c.is_whitespace()))
                {
                    return Err(self.err("range needs TO"));
                }
                self.i += 2;
                let hi = self.range_end()?;
                self.ws();
                let close = match self.peek() {
                    Some(c @ (']' | '}')) => c,
                    _ => return Err(self.err("unterminated range")),
                };
                self.i += 1;
                let bound = |v: Option<String>, incl: bool| match v {
                    None => Bound::Unbounded,
                    Some(v) if incl => Bound::Included(v),
                    Some(v) => Bound::Excluded(v),
                };
                Ast::Range {
                    field: f(),
                    lower: bound(lo, open == '['),
                    upper: bound(hi, close == ']'),
                }
            }
            _ => {
                let tok = self.term_chars();
                if tok.is_empty() {
                    return Err(self.err("missing term"));
                }
                if self.peek() == Some('~') {
                    self.i += 1;
                    let text: String = tok.iter().map(|(c, _)| *c).collect();
                    let distance = match self.number() {
                        None => 2,
                        Some(n) if n >= 1.0 => (n as u32).min(2) as u8,
                        Some(0.0) => 0,
                        // Old-style similarity (Lucene's floatToEdits).
                        Some(sim) => {
                            (((1.0 - sim) * text.chars().count() as f32) as u32).min(2) as u8
                        }
                    };
                    Ast::Fuzzy {
                        field: f(),
                        text,
                        distance,
                    }
                } else if tok.iter().any(|(c, esc)| !esc && (*c == '*' || *c == '?')) {
                    if field.is_some() && tok.len() == 1 && tok[0].0 == '*' {
                        Ast::Exists {
                            field: field.unwrap_or_default().to_string(),
                        }
                    } else if field.is_none() && tok.len() == 1 && tok[0].0 == '*' {
                        Ast::All
                    } else {
                        let pattern = tok
                            .iter()
                            .map(|(c, esc)| match (c, esc) {
                                ('*', false) => Pat::Star,
                                ('?', false) => Pat::One,
                                (c, _) => Pat::Lit(*c),
                            })
                            .collect();
                        Ast::Wildcard {
                            field: f(),
                            pattern,
                        }
                    }
                } else {
                    Ast::Term {
                        field: f(),
                        text: tok.iter().map(|(c, _)| *c).collect(),
                    }
                }
            }
        };
        self.boost(ast)
    }

    /// One end of a range: a quoted string, `*` (open), or characters up to blank/`]`/`}`.
    fn range_end(&mut self) -> Result<Option<String>, QueryError> {
        self.ws();
        if self.peek() == Some('"') {
            self.i += 1;
            let mut v = String::new();
            loop {
                match self.peek() {
                    None => return Err(self.err("unterminated quoted range end")),
                    Some('"') => break,
                    Some('\\') if self.i + 1 < self.s.len() => {
                        v.push(self.s[self.i + 1]);
                        self.i += 2;
                    }
                    Some(c) => {
                        v.push(c);
                        self.i += 1;
                    }
                }
            }
            self.i += 1;
            return Ok(Some(v));
        }
        let mut v = String::new();
        let mut any_escaped = false;
        while let Some(c) = self.peek() {
            if c.is_whitespace() || c == ']' || c == '}' {
                break;
            }
            if c == '\\' && self.i + 1 < self.s.len() {
                v.push(self.s[self.i + 1]);
                any_escaped = true;
                self.i += 2;
                continue;
            }
            v.push(c);
            self.i += 1;
        }
        if v.is_empty() {
            return Err(self.err("missing range end"));
        }
        Ok(if v == "*" && !any_escaped {
            None
        } else {
            Some(v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(f: &str, t: &str) -> Ast {
        Ast::Term {
            field: Some(f.into()),
            text: t.into(),
        }
    }

    #[test]
    fn shapes() {
        assert_eq!(parse("*:*").unwrap(), Ast::All);
        assert_eq!(
            parse("content:a__=__b").unwrap(),
            term("content", "a__=__b")
        );
        assert_eq!(
            parse("+a:x -b:y").unwrap(),
            Ast::Bool(vec![
                (Occur::Must, term("a", "x")),
                (Occur::MustNot, term("b", "y"))
            ])
        );
        assert_eq!(
            parse("a:x AND NOT b:y").unwrap(),
            Ast::Bool(vec![
                (Occur::Must, term("a", "x")),
                (Occur::MustNot, term("b", "y"))
            ])
        );
        assert_eq!(parse("content:a\\:b").unwrap(), term("content", "a:b"));
        assert!(matches!(
            parse("content:[a TO *}").unwrap(),
            Ast::Range {
                upper: Bound::Unbounded,
                ..
            }
        ));
        assert_eq!(parse("   ").unwrap(), Ast::Nothing);
    }

    #[test]
    fn errors() {
        for bad in [
            "(a",
            "a:",
            "\"abc",
            "[a TO b",
            "a AND",
            "OR b",
            "content:[a b]",
            "a^",
            ")",
        ] {
            assert!(parse(bad).is_err(), "{bad} should fail");
        }
    }
}
