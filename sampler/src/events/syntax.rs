//! The event syntax users type: the subset of perf's that matters for sampling.
//!
//! ```text
//! list     := item (',' item)*
//! item     := '{' event (',' event)* '}' [':' mods]  |  event
//! event    := pmu '/' [terms] '/' [mods | ':' mods]  |  name [':' mods]
//! terms    := term (',' term)*        term := key ['=' number]
//! name     := generic hardware | software | hardware cache | r<hex> | PMU alias
//! mods     := one or more of u k h
//! ```
//!
//! Parsing is pure and total: any input gives an [`EventList`] or a [`ParseError`]
//! that points at the problem. Names that are not generic events are kept as
//! [`EventKind::Symbol`] and resolved against the PMUs' aliases when planning.

use std::fmt;

/// The generic hardware events (`PERF_TYPE_HARDWARE`), by `PERF_COUNT_HW_*` id.
pub const HARDWARE: &[(&str, u64)] = &[
    ("cycles", 0),
    ("cpu-cycles", 0),
    ("instructions", 1),
    ("cache-references", 2),
    ("cache-misses", 3),
    ("branch-instructions", 4),
    ("branches", 4),
    ("branch-misses", 5),
    ("bus-cycles", 6),
    ("stalled-cycles-frontend", 7),
    ("idle-cycles-frontend", 7),
    ("stalled-cycles-backend", 8),
    ("idle-cycles-backend", 8),
    ("ref-cycles", 9),
];

/// The software events (`PERF_TYPE_SOFTWARE`), by `PERF_COUNT_SW_*` id.
pub const SOFTWARE: &[(&str, u64)] = &[
    ("cpu-clock", 0),
    ("task-clock", 1),
    ("page-faults", 2),
    ("faults", 2),
    ("context-switches", 3),
    ("cs", 3),
    ("cpu-migrations", 4),
    ("migrations", 4),
    ("minor-faults", 5),
    ("major-faults", 6),
    ("alignment-faults", 7),
    ("emulation-faults", 8),
];

/// Hardware cache ids (`PERF_COUNT_HW_CACHE_*`) and the spellings perf accepts.
const CACHES: &[(&[&str], u64)] = &[
    (&["L1-dcache", "l1-d", "l1d", "L1-data"], 0),
    (&["L1-icache", "l1-i", "l1i", "L1-instruction"], 1),
    (&["LLC", "L2"], 2),
    (&["dTLB", "d-tlb", "Data-TLB"], 3),
    (&["iTLB", "i-tlb", "Instruction-TLB"], 4),
    (&["branch", "branches", "bpu", "btb", "bpc"], 5),
    (&["node"], 6),
];
const CACHE_OPS: &[(&[&str], u64)] = &[
    (&["load", "loads", "read"], 0),
    (&["store", "stores", "write"], 1),
    (
        &[
            "prefetch",
            "prefetches",
            "speculative-read",
            "speculative-load",
        ],
        2,
    ),
];
const CACHE_RESULTS: &[(&[&str], u64)] = &[
    (&["access", "accesses", "refs", "reference", "ops"], 0),
    (&["miss", "misses"], 1),
];

/// The longest event list accepted, a bound for hostile input.
pub const MAX_LEN: usize = 64 * 1024;

/// Which privilege levels an event counts (perf's `:u`, `:k`, `:h`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Modifiers {
    pub user: bool,
    pub kernel: bool,
    pub hv: bool,
}

impl Modifiers {
    fn any(self) -> bool {
        self.user || self.kernel || self.hv
    }

    fn union(self, o: Self) -> Self {
        Self {
            user: self.user || o.user,
            kernel: self.kernel || o.kernel,
            hv: self.hv || o.hv,
        }
    }

    /// perf's rule: naming any level excludes the ones not named.
    pub fn exclude_user(self) -> bool {
        self.any() && !self.user
    }
    pub fn exclude_kernel(self) -> bool {
        self.any() && !self.kernel
    }
    pub fn exclude_hv(self) -> bool {
        self.any() && !self.hv
    }
}

impl fmt::Display for Modifiers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (on, c) in [(self.user, 'u'), (self.kernel, 'k'), (self.hv, 'h')] {
            if on {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// A `key[=value]` term between a PMU's slashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub key: String,
    pub value: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A generic hardware event, by `PERF_COUNT_HW_*` id.
    Hardware(u64),
    /// A software event, by `PERF_COUNT_SW_*` id.
    Software(u64),
    /// A hardware cache event: `cache | op << 8 | result << 16`.
    Cache(u64),
    /// `rNNNN`: a raw config for the core PMU.
    Raw(u64),
    /// `pmu/terms/`.
    Pmu { pmu: String, terms: Vec<Term> },
    /// Any other name: a PMU alias, resolved when planning.
    Symbol(String),
}

/// One event as typed, with its kind and modifiers (group modifiers included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    /// The event as the user wrote it, without modifiers.
    pub name: String,
    pub kind: EventKind,
    pub modifiers: Modifiers,
}

impl EventSpec {
    /// The name with its modifiers, as perf prints it (`cycles:u`).
    pub fn display(&self) -> String {
        if self.modifiers.any() {
            format!("{}:{}", self.name, self.modifiers)
        } else {
            self.name.clone()
        }
    }
}

/// Events opened together: a `{...}` group, or a single event (a group of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub events: Vec<EventSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventList {
    pub groups: Vec<Group>,
}

impl EventList {
    pub fn events(&self) -> impl Iterator<Item = &EventSpec> {
        self.groups.iter().flat_map(|g| g.events.iter())
    }
}

/// What is wrong with an event list, and where (a byte offset).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at column {column} of `{input}`)", column = .at + 1)]
pub struct ParseError {
    pub message: String,
    pub at: usize,
    pub input: String,
}

/// Parses a comma-separated event list such as `{cycles,instructions}:u,page-faults`.
pub fn parse(input: &str) -> Result<EventList, ParseError> {
    if input.len() > MAX_LEN {
        return Err(ParseError {
            message: format!("event list longer than {MAX_LEN} bytes"),
            at: 0,
            input: String::new(),
        });
    }
    let mut p = Parser { s: input, pos: 0 };
    let list = p.list().map_err(|(message, at)| ParseError {
        message,
        at,
        input: input.to_owned(),
    })?;
    Ok(list)
}

type PResult<T> = Result<T, (String, usize)>;

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn list(&mut self) -> PResult<EventList> {
        let mut groups = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None if groups.is_empty() => return Err(("empty event list".into(), self.pos)),
                None | Some(',') => return Err(("empty event in the list".into(), self.pos)),
                Some('{') => groups.push(self.group()?),
                Some('}') => return Err(("`}` without a matching `{`".into(), self.pos)),
                Some(_) => groups.push(Group {
                    events: vec![self.event()?],
                }),
            }
            self.skip_ws();
            match self.bump() {
                None => return Ok(EventList { groups }),
                Some(',') => continue,
                Some('}') => return Err(("`}` without a matching `{`".into(), self.pos - 1)),
                Some(c) => return Err((format!("unexpected `{c}` after an event"), self.pos - 1)),
            }
        }
    }

    fn group(&mut self) -> PResult<Group> {
        let open = self.pos;
        self.bump(); // '{'
        let mut events = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None => return Err(("`{` has no matching `}`".into(), open)),
                Some('{') => return Err(("groups cannot be nested".into(), self.pos)),
                Some(',' | '}') => return Err(("empty event in the group".into(), self.pos)),
                Some(_) => events.push(self.event()?),
            }
            self.skip_ws();
            match self.bump() {
                Some(',') => continue,
                Some('}') => break,
                None => return Err(("`{` has no matching `}`".into(), open)),
                Some(c) => return Err((format!("unexpected `{c}` in a group"), self.pos - 1)),
            }
        }
        if self.peek() == Some(':') {
            self.bump();
            let mods = self.modifiers()?;
            for e in &mut events {
                e.modifiers = e.modifiers.union(mods);
            }
        }
        Ok(Group { events })
    }

    fn word(&mut self) -> &str {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| !matches!(c, ',' | '{' | '}' | ':' | '/' | '=') && !c.is_whitespace())
        {
            self.bump();
        }
        &self.s[start..self.pos]
    }

    fn event(&mut self) -> PResult<EventSpec> {
        let start = self.pos;
        let name = self.word().to_owned();
        if name.is_empty() {
            let c = self.peek().unwrap_or(' ');
            return Err((format!("expected an event name, found `{c}`"), start));
        }
        if self.peek() == Some('/') {
            let slash = self.pos;
            self.bump();
            let terms = self.terms(&name, slash)?;
            let text = self.s[start..self.pos].to_owned();
            // perf also accepts modifiers right after the closing slash (`cpu/.../u`).
            let modifiers = match self.peek() {
                Some(':') => {
                    self.bump();
                    self.modifiers()?
                }
                Some(c) if c.is_ascii_alphabetic() => self.modifiers()?,
                _ => Modifiers::default(),
            };
            return Ok(EventSpec {
                name: text,
                kind: EventKind::Pmu { pmu: name, terms },
                modifiers,
            });
        }
        let kind = classify(&name).map_err(|m| (m, start))?;
        let modifiers = if self.peek() == Some(':') {
            self.bump();
            self.modifiers()?
        } else {
            Modifiers::default()
        };
        Ok(EventSpec {
            name,
            kind,
            modifiers,
        })
    }

    fn terms(&mut self, pmu: &str, slash: usize) -> PResult<Vec<Term>> {
        let mut terms = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None => {
                    return Err((format!("`{pmu}/` has no closing `/`"), slash));
                }
                Some('/') => {
                    self.bump();
                    return Ok(terms);
                }
                _ => {}
            }
            let at = self.pos;
            let key = self.word().to_owned();
            if key.is_empty() {
                let c = self.peek().unwrap_or(' ');
                return Err((format!("expected a term in `{pmu}/.../`, found `{c}`"), at));
            }
            let value = if self.peek() == Some('=') {
                self.bump();
                let vat = self.pos;
                let v = self.word();
                Some(parse_number(v).ok_or_else(|| {
                    (
                        format!("`{key}={v}`: the value is not a number (decimal or 0x hex)"),
                        vat,
                    )
                })?)
            } else {
                None
            };
            terms.push(Term { key, value });
            self.skip_ws();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some('/') | None => {}
                Some(c) => {
                    return Err((format!("unexpected `{c}` in `{pmu}/.../`"), self.pos));
                }
            }
        }
    }

    fn modifiers(&mut self) -> PResult<Modifiers> {
        let start = self.pos;
        let mut m = Modifiers::default();
        while let Some(c) = self.peek().filter(char::is_ascii_alphanumeric) {
            match c {
                'u' => m.user = true,
                'k' => m.kernel = true,
                'h' => m.hv = true,
                _ => {
                    return Err((
                        format!("unknown modifier `{c}` (supported: u, k, h)"),
                        self.pos,
                    ));
                }
            }
            self.bump();
        }
        if self.pos == start {
            return Err(("expected modifiers (u, k, h) after `:`".into(), start));
        }
        Ok(m)
    }
}

/// A number as perf writes them: `0x` hex or decimal.
pub fn parse_number(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn lookup(table: &[(&str, u64)], name: &str) -> Option<u64> {
    table
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, id)| id)
}

fn classify(name: &str) -> Result<EventKind, String> {
    if let Some(id) = lookup(HARDWARE, name) {
        return Ok(EventKind::Hardware(id));
    }
    if let Some(id) = lookup(SOFTWARE, name) {
        return Ok(EventKind::Software(id));
    }
    if let Some(cfg) = cache_event(name) {
        return Ok(EventKind::Cache(cfg));
    }
    if let Some(hex) = name.strip_prefix('r')
        && !hex.is_empty()
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return u64::from_str_radix(hex, 16)
            .map(EventKind::Raw)
            .map_err(|_| format!("raw event `{name}` does not fit 64 bits"));
    }
    Ok(EventKind::Symbol(name.to_owned()))
}

fn find(table: &[(&[&str], u64)], word: &str) -> Option<u64> {
    table
        .iter()
        .find(|(names, _)| names.iter().any(|n| n.eq_ignore_ascii_case(word)))
        .map(|&(_, id)| id)
}

/// `L1-dcache-load-misses`, `LLC-loads`, `dTLB-misses`...: `cache-op[-result]` or
/// `cache-result` (op load), as perf parses them.
fn cache_event(name: &str) -> Option<u64> {
    for &(names, cache) in CACHES {
        for n in names {
            let Some(rest) = name
                .get(..n.len())
                .filter(|p| p.eq_ignore_ascii_case(n))
                .and_then(|_| name[n.len()..].strip_prefix('-'))
            else {
                continue;
            };
            let parts: Vec<&str> = rest.split('-').collect();
            // Op and result words may themselves contain '-' (speculative-read).
            for split in 1..=parts.len() {
                let first = parts[..split].join("-");
                let second = parts[split..].join("-");
                if let Some(op) = find(CACHE_OPS, &first) {
                    let result = if second.is_empty() {
                        Some(0)
                    } else {
                        find(CACHE_RESULTS, &second)
                    };
                    if let Some(result) = result {
                        return Some(cache | op << 8 | result << 16);
                    }
                } else if second.is_empty()
                    && let Some(result) = find(CACHE_RESULTS, &first)
                {
                    return Some(cache | result << 16);
                }
            }
        }
    }
    None
}

/// Every generic event name, for listings and suggestions.
pub fn generic_names() -> impl Iterator<Item = &'static str> {
    HARDWARE.iter().chain(SOFTWARE).map(|&(n, _)| n)
}

/// The hardware cache event names in perf's canonical spelling.
pub fn cache_names() -> Vec<String> {
    let mut v = Vec::new();
    for (names, _) in CACHES {
        for (ops, _) in CACHE_OPS {
            v.push(format!("{}-{}", names[0], ops[1]));
            v.push(format!("{}-{}-misses", names[0], ops[0]));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<EventKind> {
        parse(s).unwrap().events().map(|e| e.kind.clone()).collect()
    }

    fn err(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    #[test]
    fn generic_software_and_raw() {
        assert_eq!(
            kinds("cycles,cpu-cycles,instructions,ref-cycles,stalled-cycles-backend"),
            [
                EventKind::Hardware(0),
                EventKind::Hardware(0),
                EventKind::Hardware(1),
                EventKind::Hardware(9),
                EventKind::Hardware(8)
            ]
        );
        assert_eq!(
            kinds(
                "cpu-clock,task-clock,page-faults,context-switches,cpu-migrations,minor-faults,major-faults"
            ),
            [0, 1, 2, 3, 4, 5, 6].map(EventKind::Software)
        );
        assert_eq!(
            kinds("r1a8, r0"),
            [EventKind::Raw(0x1a8), EventKind::Raw(0)]
        );
        assert_eq!(kinds("rotten"), [EventKind::Symbol("rotten".into())]);
        assert!(err("r11111111111111111").contains("does not fit 64 bits"));
    }

    #[test]
    fn cache_events() {
        assert_eq!(kinds("L1-dcache-load-misses"), [EventKind::Cache(0x10000)]);
        assert_eq!(kinds("L1-dcache-loads"), [EventKind::Cache(0)]);
        assert_eq!(kinds("LLC-loads"), [EventKind::Cache(2)]);
        assert_eq!(
            kinds("LLC-store-misses"),
            [EventKind::Cache(2 | 1 << 8 | 1 << 16)]
        );
        assert_eq!(kinds("dTLB-load-misses"), [EventKind::Cache(3 | 1 << 16)]);
        assert_eq!(kinds("iTLB-loads"), [EventKind::Cache(4)]);
        assert_eq!(kinds("branch-load-misses"), [EventKind::Cache(5 | 1 << 16)]);
        assert_eq!(kinds("l1d-misses"), [EventKind::Cache(1 << 16)]);
        assert_eq!(
            kinds("L1-dcache-speculative-read-misses"),
            [EventKind::Cache(2 << 8 | 1 << 16)]
        );
        assert_eq!(kinds("LLC-bogus"), [EventKind::Symbol("LLC-bogus".into())]);
        // Every listed name parses to a cache event.
        for n in cache_names() {
            assert!(matches!(kinds(&n)[..], [EventKind::Cache(_)]), "{n}");
        }
    }

    #[test]
    fn pmu_terms_and_aliases() {
        let l = parse("cpu_core/event=0x3c,umask=0x0/,armv8_pmuv3/cpu_cycles/").unwrap();
        let ev: Vec<&EventSpec> = l.events().collect();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].name, "cpu_core/event=0x3c,umask=0x0/");
        assert_eq!(
            ev[0].kind,
            EventKind::Pmu {
                pmu: "cpu_core".into(),
                terms: vec![
                    Term {
                        key: "event".into(),
                        value: Some(0x3c)
                    },
                    Term {
                        key: "umask".into(),
                        value: Some(0)
                    },
                ]
            }
        );
        assert_eq!(
            ev[1].kind,
            EventKind::Pmu {
                pmu: "armv8_pmuv3".into(),
                terms: vec![Term {
                    key: "cpu_cycles".into(),
                    value: None
                }]
            }
        );
        assert_eq!(kinds("cpu//").len(), 1);
        assert!(err("cpu/event=zz/").contains("`event=zz`: the value is not a number"));
    }

    #[test]
    fn modifiers_follow_perf() {
        let e = |s: &str| parse(s).unwrap().events().next().unwrap().modifiers;
        let u = e("cycles:u");
        assert!(!u.exclude_user() && u.exclude_kernel() && u.exclude_hv());
        let k = e("cycles:k");
        assert!(k.exclude_user() && !k.exclude_kernel() && k.exclude_hv());
        let uk = e("instructions:uk");
        assert!(!uk.exclude_user() && !uk.exclude_kernel() && uk.exclude_hv());
        let none = e("cycles");
        assert!(!none.exclude_user() && !none.exclude_kernel() && !none.exclude_hv());
        assert_eq!(e("cpu/event=0x3c/u"), u);
        assert_eq!(e("cpu/event=0x3c/:k"), k);
        assert!(err("cycles:x").contains("unknown modifier `x` (supported: u, k, h)"));
        assert!(err("cycles:").contains("expected modifiers"));
        assert_eq!(
            parse("cycles:u")
                .unwrap()
                .events()
                .next()
                .unwrap()
                .display(),
            "cycles:u"
        );
    }

    #[test]
    fn groups() {
        let l = parse("{cycles,instructions}:u, page-faults ,{cpu/event=1/,r2:k}").unwrap();
        assert_eq!(l.groups.len(), 3);
        assert_eq!(l.groups[0].events.len(), 2);
        assert!(
            l.groups[0]
                .events
                .iter()
                .all(|e| e.modifiers.user && !e.modifiers.kernel)
        );
        assert_eq!(l.groups[1].events[0].kind, EventKind::Software(2));
        assert_eq!(l.groups[2].events.len(), 2);
        assert!(l.groups[2].events[1].modifiers.kernel);
    }

    #[test]
    fn errors_point_at_the_problem() {
        assert_eq!(err(""), "empty event list (at column 1 of ``)");
        assert_eq!(
            err("{cycles,instructions"),
            "`{` has no matching `}` (at column 1 of `{cycles,instructions`)"
        );
        assert!(err("cycles}").contains("`}` without a matching `{`"));
        assert!(err("cycles,,instructions").contains("empty event in the list (at column 8"));
        assert!(err("cycles,").contains("empty event"));
        assert!(err("{cycles,{instructions}}").contains("groups cannot be nested"));
        assert!(err("{}").contains("empty event in the group"));
        assert!(err("cpu/event=0x3c").contains("`cpu/` has no closing `/`"));
        assert!(err("cpu/event=1 umask=2/").contains("unexpected `u` in `cpu/.../`"));
        assert!(err("cpu/,/").contains("expected a term in `cpu/.../`, found `,`"));
        assert!(err("cycles instructions").contains("unexpected `i`"));
        assert!(err(":u").contains("expected an event name, found `:`"));
        assert!(err(&"x".repeat(MAX_LEN + 1)).contains("longer than"));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0x1F"), Some(31));
        assert_eq!(parse_number("42"), Some(42));
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("99999999999999999999"), None);
    }
}
