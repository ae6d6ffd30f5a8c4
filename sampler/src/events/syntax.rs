//! The event syntax users type: the subset of perf's that matters for sampling.
//!
//! ```text
//! list     := item (',' item)*
//! item     := '{' event (',' event)* '}' [':' mods]  |  event
//! event    := pmu '/' [terms] '/' [mods | ':' mods]  |  name [':' mods]
//! terms    := term (',' term)*        term := key ['=' number]
//! name     := generic hardware | software | hardware cache | r<hex> | PMU alias
//! mods     := one or more of u k h G H p P I D e S W (see [`Modifiers`])
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
    ("dummy", 9),
    ("bpf-output", 10),
    ("cgroup-switches", 11),
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

/// What an event's modifiers ask for, as the `perf_event_attr` bits perf 6.1 sets for
/// them (`get_event_modifier`, and `event_attr_init` for the defaults):
///
/// | modifier | meaning |
/// |---|---|
/// | `u` `k` `h` | count only user / kernel / hypervisor; naming any excludes the others; `u` also excludes guests |
/// | `G` `H` | count only in guests (`exclude_host`) / only on the host (`exclude_guest`) |
/// | `p` `pp` `ppp` | precise sampling level 1–3 (`precise_ip`); excludes guests |
/// | `P` | the highest precise level the PMU has |
/// | `I` | do not count while idle (`exclude_idle`) |
/// | `D` | pinned: the group stays on the PMU or is put in error (leaders only) |
/// | `e` | exclusive: the group has the PMU to itself (leaders only) |
/// | `S` | sample-read: the leader samples, the members are read at each sample |
/// | `W` | weak group: when the group cannot be opened together, open its events apart |
///
/// An event without modifiers excludes guests, as perf's default does (perf sets
/// `exclude_guest` for every event it opens outside `perf kvm`); any modifier string
/// starts from nothing, so `cycles:k` counts guests' kernels too, as in perf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modifiers {
    pub exclude_user: bool,
    pub exclude_kernel: bool,
    pub exclude_hv: bool,
    pub exclude_host: bool,
    pub exclude_guest: bool,
    pub exclude_idle: bool,
    /// `p`s: 0–3.
    pub precise: u8,
    /// `P`.
    pub precise_max: bool,
    pub pinned: bool,
    pub exclusive: bool,
    pub sample_read: bool,
    pub weak: bool,
    /// `G` or `H` was given: later `u` and `p` leave the guest bits alone.
    exclude_gh: bool,
    /// The modifier letters, as written (the event's own, then its group's).
    text: String,
}

impl Default for Modifiers {
    /// No modifiers: perf's defaults (guests excluded).
    fn default() -> Self {
        Self {
            exclude_user: false,
            exclude_kernel: false,
            exclude_hv: false,
            exclude_host: false,
            exclude_guest: true,
            exclude_idle: false,
            precise: 0,
            precise_max: false,
            pinned: false,
            exclusive: false,
            sample_read: false,
            weak: false,
            exclude_gh: false,
            text: String::new(),
        }
    }
}

/// The modifier letters sampler takes, in perf's order.
pub const MODIFIER_LETTERS: &str = "ukhGHpPIDeSW";

impl Modifiers {
    /// The modifiers as written after `:` (empty: none).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// An event's own modifier string `s` (perf's `get_event_modifier` with no event:
    /// every bit starts clear).
    fn parse(s: &str) -> Result<Self, (String, usize)> {
        let start = Self {
            exclude_guest: false,
            ..Self::default()
        };
        start.with(s)
    }

    /// These modifiers with `s` applied on top, as perf applies a group's modifiers to
    /// each member (starting from the member's own bits). Errors carry the offset of
    /// the letter in `s`.
    fn with(&self, s: &str) -> Result<Self, (String, usize)> {
        check_modifier(s)?;
        let mut m = self.clone();
        let mut exclude = m.exclude_user || m.exclude_kernel || m.exclude_hv;
        for (at, c) in s.char_indices() {
            let mut level = |m: &mut Self| {
                if !exclude {
                    exclude = true;
                    (m.exclude_user, m.exclude_kernel, m.exclude_hv) = (true, true, true);
                }
            };
            match c {
                'u' => {
                    level(&mut m);
                    if !m.exclude_gh {
                        m.exclude_guest = true;
                    }
                    m.exclude_user = false;
                }
                'k' => {
                    level(&mut m);
                    m.exclude_kernel = false;
                }
                'h' => {
                    level(&mut m);
                    m.exclude_hv = false;
                }
                'G' | 'H' => {
                    if !m.exclude_gh {
                        (m.exclude_gh, m.exclude_guest, m.exclude_host) = (true, true, true);
                    }
                    if c == 'G' {
                        m.exclude_guest = false;
                    } else {
                        m.exclude_host = false;
                    }
                }
                'p' => {
                    m.precise += 1;
                    if m.precise > 3 {
                        return Err(("at most 3 `p`s: precise levels are 1 to 3".into(), at));
                    }
                    // Precise sampling requires excluding guests (perf's comment).
                    if !m.exclude_gh {
                        m.exclude_guest = true;
                    }
                }
                'P' => m.precise_max = true,
                'I' => m.exclude_idle = true,
                'D' => m.pinned = true,
                'e' => m.exclusive = true,
                'S' => m.sample_read = true,
                'W' => m.weak = true,
                'b' => {
                    return Err((
                        "modifier `b` (perf's BPF counters) is not needed: sampler always \
                         aggregates in BPF"
                            .into(),
                        at,
                    ));
                }
                _ => {
                    return Err((
                        format!(
                            "unknown modifier `{c}` (supported: u, k, h, G, H, p, pp, ppp, P, \
                             I, D, e, S, W)"
                        ),
                        at,
                    ));
                }
            }
        }
        m.text.push_str(s);
        Ok(m)
    }
}

/// perf's `check_modifier`: no letter but `p` twice.
fn check_modifier(s: &str) -> Result<(), (String, usize)> {
    for (at, c) in s.char_indices() {
        if c != 'p' && s[..at].contains(c) {
            return Err((format!("modifier `{c}` given twice"), at));
        }
    }
    Ok(())
}

impl fmt::Display for Modifiers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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
        if self.modifiers.text().is_empty() {
            self.name.clone()
        } else {
            format!("{}:{}", self.name, self.modifiers)
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
            let (text, at) = self.modifier_text()?;
            for e in &mut events {
                e.modifiers = e.modifiers.with(text).map_err(|(m, i)| (m, at + i))?;
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

    /// The letters of a modifier string and where they start.
    fn modifier_text(&mut self) -> PResult<(&str, usize)> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
            self.bump();
        }
        if self.pos == start {
            return Err((
                format!("expected modifiers ({MODIFIER_LETTERS}) after `:`"),
                start,
            ));
        }
        Ok((&self.s[start..self.pos], start))
    }

    fn modifiers(&mut self) -> PResult<Modifiers> {
        let (text, at) = self.modifier_text()?;
        Modifiers::parse(text).map_err(|(m, i)| (m, at + i))
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

    /// The bits of one modifier string, as perf 6.1's `perf stat -vv` prints them:
    /// (exclude_user, exclude_kernel, exclude_hv, exclude_host, exclude_guest).
    fn bits(m: &Modifiers) -> (bool, bool, bool, bool, bool) {
        (
            m.exclude_user,
            m.exclude_kernel,
            m.exclude_hv,
            m.exclude_host,
            m.exclude_guest,
        )
    }

    #[test]
    fn modifiers_follow_perf() {
        let e = |s: &str| parse(s).unwrap().events().next().unwrap().modifiers.clone();
        let (t, f) = (true, false);
        // No modifier: perf's default excludes guests.
        assert_eq!(bits(&e("cycles")), (f, f, f, f, t));
        assert_eq!(bits(&e("cycles:u")), (f, t, t, f, t));
        assert_eq!(bits(&e("cycles:k")), (t, f, t, f, f));
        assert_eq!(bits(&e("cycles:h")), (t, t, f, f, f));
        assert_eq!(bits(&e("instructions:uk")), (f, f, t, f, t));
        assert_eq!(bits(&e("cycles:G")), (f, f, f, t, f));
        assert_eq!(bits(&e("cycles:H")), (f, f, f, f, t));
        assert_eq!(bits(&e("cycles:GH")), (f, f, f, f, f));
        assert_eq!(bits(&e("cycles:Gu")), (f, t, t, t, f));
        assert_eq!(bits(&e("cycles:P")), (f, f, f, f, f));
        for (m, level) in [("p", 1), ("pp", 2), ("ppp", 3)] {
            let got = e(&format!("cycles:{m}"));
            assert_eq!((got.precise, got.exclude_guest), (level, true), "{m}");
        }
        let all = e("cycles:PIDeSW");
        assert!(all.precise_max && all.exclude_idle && all.pinned && all.exclusive);
        assert!(all.sample_read && all.weak);
        assert_eq!(e("cpu/event=0x3c/u"), e("cycles:u"));
        assert_eq!(bits(&e("cpu/event=0x3c/:k")), bits(&e("cycles:k")));
        assert!(err("cycles:x").contains("unknown modifier `x` (supported: u, k, h, G, H, p"));
        assert!(err("cycles:uu").contains("modifier `u` given twice (at column 9"));
        assert!(err("cycles:pppp").contains("at most 3 `p`s"));
        assert!(err("cycles:b").contains("sampler always aggregates in BPF"));
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
    fn dummy_and_the_other_software_events() {
        assert_eq!(
            kinds("dummy,bpf-output,cgroup-switches"),
            [9, 10, 11].map(EventKind::Software)
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
                .all(|e| !e.modifiers.exclude_user && e.modifiers.exclude_kernel)
        );
        assert_eq!(l.groups[1].events[0].kind, EventKind::Software(2));
        assert_eq!(l.groups[2].events.len(), 2);
        assert!(!l.groups[2].events[1].modifiers.exclude_kernel);
        // A group's modifiers start from each member's own bits, as perf's do: the
        // default's exclude_guest stays under `:k`; an own `:k` cleared it, and the
        // group's `u` sets it again.
        let g = parse("{cycles,instructions}:k").unwrap();
        assert_eq!(
            bits(&g.groups[0].events[1].modifiers),
            (true, false, true, false, true)
        );
        let g = parse("{cpu-clock:k,task-clock}:u").unwrap();
        assert_eq!(
            bits(&g.groups[0].events[0].modifiers),
            (false, false, true, false, true)
        );
        assert_eq!(g.groups[0].events[0].display(), "cpu-clock:ku");
        let e = err("{cycles:pp,instructions}:pp");
        assert!(
            e.contains("at most 3 `p`s: precise levels are 1 to 3 (at column 27"),
            "{e}"
        );
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
