//! A window's lines as the terminal shows them: entries sorted by time (a room line once per log
//! entry, however often the log replays it), each laid out as `HH:MM:SS <nick> text`,
//! `HH:MM:SS * nick does x` or `HH:MM:SS -!- notice`, wrapped at word boundaries with its
//! continuation rows indented under the text (weechat's and irssi's indent), and a scroll
//! position counted in rows from the bottom that stays within the lines (scrolling up stops with
//! the first line at the top) and keeps the same lines in view across a resize. Pure state: the
//! terminal code styles and draws the rows it returns.

use std::collections::HashSet;
use std::ops::Range;

use swarm::Key;

use super::editor::{char_width, str_width};

/// Entries kept per window (a room's log keeps everything).
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<who> text`
    Say,
    /// `* who text` (a `/me`)
    Action,
    /// `-!- text`: joins, parts, nick changes, replies to commands, errors.
    Notice,
}

/// What a piece of a laid-out line is, for styling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Time,
    Nick,
    Marker,
    Text,
}

/// A line as shown, and its parts (byte ranges of it).
pub type Laid = (String, Vec<(Range<usize>, Part)>);

#[derive(Debug, Clone)]
pub struct Entry {
    /// ms since the epoch.
    pub time: i64,
    pub kind: Kind,
    pub who: String,
    pub text: String,
    /// The log entry's key (none for local notices).
    pub key: Option<Key>,
    /// The text names the user's nick.
    pub mention: bool,
    /// Written by the user.
    pub own: bool,
}

impl Entry {
    pub fn notice(time: i64, text: impl Into<String>) -> Entry {
        Entry {
            time,
            kind: Kind::Notice,
            who: String::new(),
            text: text.into(),
            key: None,
            mention: false,
            own: false,
        }
    }

    /// The line as shown, and its parts (byte ranges); control characters in what peers sent are
    /// shown as `�` (never written raw to the terminal).
    pub fn layout(&self) -> Laid {
        let mut line = String::new();
        let mut parts = Vec::new();
        let mut push = |line: &mut String, text: &str, part: Part| {
            let start = line.len();
            line.push_str(text);
            parts.push((start..line.len(), part));
        };
        push(&mut line, &super::clock(self.time), Part::Time);
        let who = clean(&self.who);
        match self.kind {
            Kind::Say => {
                push(&mut line, " <", Part::Marker);
                push(&mut line, &who, Part::Nick);
                push(&mut line, "> ", Part::Marker);
            }
            Kind::Action => {
                push(&mut line, " * ", Part::Marker);
                push(&mut line, &who, Part::Nick);
                push(&mut line, " ", Part::Marker);
            }
            Kind::Notice => push(&mut line, " -!- ", Part::Marker),
        }
        push(&mut line, &clean(&self.text), Part::Text);
        (line, parts)
    }
}

/// Text with control characters replaced: a newline or tab by a space, others by `�`.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' | '\r' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// Whether `text` names `nick` as a word (case-insensitive), as chatwizard's `\b<nick>\b`.
pub fn mentions(text: &str, nick: &str) -> bool {
    if nick.is_empty() {
        return false;
    }
    let text = text.to_lowercase();
    let nick = nick.to_lowercase();
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(&nick).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + nick.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// Splits `text` into rows: the first `width` columns wide, the others `width - indent` (they
/// are drawn after `indent` blanks). Breaks after the last blank that fits, but never inside the
/// first `keep` bytes (the time and nick); a word longer than a row is cut. The blank a row
/// breaks at is dropped. Byte ranges of `text`.
pub fn wrap(text: &str, width: usize, indent: usize, keep: usize) -> Vec<Range<usize>> {
    let width = width.max(1);
    let mut rows = Vec::new();
    let mut start = 0;
    let mut avail = width;
    loop {
        let rest = &text[start..];
        if str_width(rest) <= avail {
            rows.push(start..text.len());
            return rows;
        }
        let mut used = 0;
        let mut end = start;
        let mut blank = None;
        for (i, c) in rest.char_indices() {
            let w = char_width(c);
            if used + w > avail {
                break;
            }
            used += w;
            if c == ' ' && start + i >= keep && i > 0 {
                blank = Some(start + i);
            }
            end = start + i + c.len_utf8();
        }
        if end == start {
            // A character wider than the row (a wide one in one column): it gets a row of its own.
            end = start + rest.chars().next().map_or(1, char::len_utf8);
        }
        let (row_end, next) = if text[end..].starts_with(' ') && end >= keep {
            (end, end + 1)
        } else if let Some(blank) = blank {
            (blank, blank + 1)
        } else {
            (end, end)
        };
        rows.push(start..row_end);
        start = next;
        if start >= text.len() {
            return rows;
        }
        avail = width.saturating_sub(indent).max(1);
    }
}

/// The indent of continuation rows: under the text, unless the prefix takes more than half the
/// width (then none, so that a long nick in a narrow pane still leaves room for text).
pub fn indent_for(prefix_width: usize, width: usize) -> usize {
    if prefix_width * 2 <= width {
        prefix_width
    } else {
        0
    }
}

/// One row on screen: which entry, which bytes of its laid-out line, and the blanks before them
/// (the continuation indent; 0 on an entry's first row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub entry: usize,
    pub range: Range<usize>,
    pub indent: usize,
}

/// What `Scrollback::rows` returns.
#[derive(Debug, Default)]
pub struct Screen {
    /// Top to bottom, at most the height.
    pub rows: Vec<Row>,
    /// Lines (entries) with rows below the view (0 when following new lines).
    pub lines_below: usize,
    /// The first line is at the top (nothing more above).
    pub at_top: bool,
}

#[derive(Debug, Default)]
pub struct Scrollback {
    entries: Vec<Entry>,
    keys: HashSet<Key>,
    /// Rows scrolled up from the bottom; 0 follows new lines.
    scroll: usize,
    /// The width of the last layout, to keep the view when it changes.
    width: usize,
}

impl Scrollback {
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Adds an entry in time order (after those of the same time); `false` if its key is here
    /// already.
    pub fn insert(&mut self, entry: Entry) -> bool {
        if let Some(key) = entry.key {
            if !self.keys.insert(key) {
                return false;
            }
        }
        let at = self.entries.partition_point(|e| e.time <= entry.time);
        if self.scroll > 0 && self.width > 0 {
            // Scrolled up: the view stays on the lines it shows (irssi's behaviour); an entry
            // that lands below them pushes them up by its rows.
            self.scroll += self.rows_of(&entry, self.width);
        }
        self.entries.insert(at, entry);
        if self.entries.len() > MAX_ENTRIES {
            self.entries.remove(0);
        }
        true
    }

    /// `/clear`: empties the window. Keys are kept, so a replay of the log does not bring back
    /// what was cleared.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.scroll = 0;
    }

    pub fn scroll_up(&mut self, rows: usize) {
        self.scroll += rows;
    }

    pub fn scroll_down(&mut self, rows: usize) {
        self.scroll = self.scroll.saturating_sub(rows);
    }

    pub fn follow(&mut self) {
        self.scroll = 0;
    }

    /// An entry's rows in `width`, and the indent of its continuation rows.
    fn lay(entry: &Entry, width: usize) -> (Vec<Range<usize>>, usize) {
        let (line, parts) = entry.layout();
        let prefix = parts
            .iter()
            .find(|(_, p)| *p == Part::Text)
            .map_or(0, |(r, _)| r.start);
        let indent = indent_for(str_width(&line[..prefix]), width);
        (wrap(&line, width, indent, prefix), indent)
    }

    fn rows_of(&self, entry: &Entry, width: usize) -> usize {
        Self::lay(entry, width).0.len()
    }

    /// The rows to show in `width` × `height`, the scroll position brought within the lines
    /// first (so that one PgDn after scrolling far up moves the view at once).
    pub fn rows(&mut self, width: usize, height: usize) -> Screen {
        let width = width.max(1);
        if width != self.width && self.width > 0 && self.scroll > 0 {
            self.reanchor(width);
        }
        self.width = width;
        let mut below_first = Vec::new(); // rows from the bottom up
        let wanted = self.scroll + height;
        let mut exhausted = true;
        for (index, entry) in self.entries.iter().enumerate().rev() {
            if below_first.len() >= wanted {
                exhausted = false;
                break;
            }
            let (ranges, indent) = Self::lay(entry, width);
            for (i, range) in ranges.into_iter().enumerate().rev() {
                below_first.push(Row {
                    entry: index,
                    range,
                    indent: if i > 0 { indent } else { 0 },
                });
            }
        }
        let total = below_first.len();
        if exhausted {
            self.scroll = self.scroll.min(total.saturating_sub(height));
        }
        let end = (self.scroll + height).min(total);
        let mut rows: Vec<Row> = below_first[self.scroll..end].to_vec();
        rows.reverse();
        let hidden = &below_first[..self.scroll.min(total)];
        let lines_below = hidden
            .iter()
            .enumerate()
            .filter(|(i, row)| *i == 0 || hidden[i - 1].entry != row.entry)
            .count();
        Screen {
            rows,
            lines_below,
            at_top: exhausted && end == total,
        }
    }

    /// After a width change: the entry that was at the bottom of the view stays there.
    fn reanchor(&mut self, width: usize) {
        let mut seen = 0;
        let mut bottom = None;
        for (index, entry) in self.entries.iter().enumerate().rev() {
            seen += self.rows_of(entry, self.width);
            if seen > self.scroll {
                bottom = Some(index);
                break;
            }
        }
        let Some(bottom) = bottom else { return };
        self.scroll = self.entries[bottom + 1..]
            .iter()
            .map(|e| self.rows_of(e, width))
            .sum();
    }

    /// The laid-out line of an entry (for drawing a row of it).
    pub fn line(&self, entry: usize) -> Laid {
        self.entries[entry].layout()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut<'a>(text: &'a str, rows: &[Range<usize>]) -> Vec<&'a str> {
        rows.iter().map(|r| &text[r.clone()]).collect()
    }

    #[test]
    fn wraps_at_blanks_and_cuts_long_words() {
        let text = "12:00:00 <al> the quick brown fox jumps";
        let rows = wrap(text, 20, 14, 14);
        assert_eq!(
            cut(text, &rows),
            ["12:00:00 <al> the", "quick", "brown", "fox", "jumps"]
        );
        let text = "ab abcdefghijkl";
        assert_eq!(
            cut(text, &wrap(text, 5, 0, 0)),
            ["ab", "abcde", "fghij", "kl"]
        );
        // A perfect fit breaks at the blank after it.
        let text = "abcde fgh";
        assert_eq!(cut(text, &wrap(text, 5, 0, 0)), ["abcde", "fgh"]);
        // The prefix is not broken at its own blanks.
        let text = "12:00:00 <al> xxxxxxxxxx";
        assert_eq!(
            cut(text, &wrap(text, 16, 0, 14)),
            ["12:00:00 <al> xx", "xxxxxxxx"]
        );
    }

    #[test]
    fn wraps_by_display_width() {
        let text = "日本語日本語";
        assert_eq!(cut(text, &wrap(text, 5, 0, 0)), ["日本", "語日", "本語"]);
        assert_eq!(cut("🎉", &wrap("🎉", 1, 0, 0)), ["🎉"]);
    }

    #[test]
    fn indent_is_dropped_when_the_prefix_is_wide() {
        assert_eq!(indent_for(15, 80), 15);
        assert_eq!(indent_for(15, 20), 0);
    }

    #[test]
    fn mentions_are_whole_words() {
        assert!(mentions("hi Bob!", "bob"));
        assert!(mentions("bob: there", "bob"));
        assert!(!mentions("bobby", "bob"));
        assert!(!mentions("hi", ""));
    }

    #[test]
    fn controls_are_shown_not_sent_to_the_terminal() {
        assert_eq!(clean("a\x1b[2Jb\nc"), "a\u{fffd}[2Jb c");
    }

    fn numbered(n: i64) -> Scrollback {
        let mut back = Scrollback::default();
        for i in 0..n {
            back.insert(Entry::notice(i, format!("line {i}")));
        }
        back
    }

    fn texts(back: &Scrollback, screen: &Screen) -> Vec<String> {
        screen
            .rows
            .iter()
            .map(|r| back.line(r.entry).0[r.range.clone()].to_string())
            .collect()
    }

    #[test]
    fn scrolling_stops_at_the_first_line_and_comes_back_at_once() {
        let mut back = numbered(30);
        let screen = back.rows(80, 10);
        assert!(texts(&back, &screen)[9].ends_with("line 29"));
        assert_eq!(screen.lines_below, 0);
        for _ in 0..50 {
            back.scroll_up(5);
            back.rows(80, 10);
        }
        let screen = back.rows(80, 10);
        assert!(screen.at_top);
        assert_eq!(screen.lines_below, 20);
        assert!(texts(&back, &screen)[0].ends_with("line 0"));
        back.scroll_down(5);
        let screen = back.rows(80, 10);
        assert!(
            texts(&back, &screen)[0].ends_with("line 5"),
            "one PgDn moves"
        );
        back.scroll_down(100);
        assert_eq!(back.rows(80, 10).lines_below, 0);
    }

    #[test]
    fn scrolled_up_the_view_stays_when_lines_come() {
        let mut back = numbered(30);
        back.rows(80, 10);
        back.scroll_up(10);
        let screen = back.rows(80, 10);
        let before = texts(&back, &screen);
        back.insert(Entry::notice(100, "new"));
        let screen = back.rows(80, 10);
        assert_eq!(texts(&back, &screen), before);
        assert_eq!(screen.lines_below, 11, "one more line below");
    }

    #[test]
    fn a_resize_keeps_the_bottom_line() {
        let mut back = Scrollback::default();
        for i in 0..30 {
            back.insert(Entry::notice(i, format!("line {i} {}", "word ".repeat(8))));
        }
        back.rows(80, 10);
        back.scroll_up(12);
        let screen = back.rows(80, 10);
        let bottom = screen.rows.last().map(|r| r.entry);
        let screen = back.rows(30, 10);
        assert_eq!(screen.rows.last().map(|r| r.entry), bottom);
    }

    #[test]
    fn a_key_is_shown_once() {
        let key = Key::from_bytes([7; 32]);
        let mut back = Scrollback::default();
        let mut entry = Entry::notice(1, "x");
        entry.key = Some(key);
        assert!(back.insert(entry.clone()));
        assert!(!back.insert(entry.clone()));
        back.clear();
        assert!(!back.insert(entry), "a cleared line does not come back");
        assert!(back.entries().is_empty());
    }
}
