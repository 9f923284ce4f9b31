//! The chat's input line, as irssi and weechat edit it: a cursor that moves and deletes by
//! character (Left/Right/Home/End, Ctrl+A/E/B/F, Backspace/Delete/Ctrl+D), kills that can be
//! yanked back (Ctrl+U to the start, Ctrl+K to the end, Ctrl+W a word; Ctrl+Y pastes the last
//! kill), Up/Down through what was sent, Tab nick completion, and a view that scrolls sideways so
//! the cursor stays visible, placed by display width (a CJK character or an emoji takes two
//! columns). Pure state: the terminal code maps keys to these calls.

use unicode_width::UnicodeWidthChar;

/// Lines kept for Up/Down.
const HISTORY: usize = 500;

/// Display width of a character: 0 for controls (they are never drawn raw), else its East Asian
/// width (2 for CJK and most emoji).
pub fn char_width(c: char) -> usize {
    if c.is_control() {
        0
    } else {
        c.width().unwrap_or(0)
    }
}

/// Display width of a string.
pub fn str_width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// Where a Tab completion is: the word it replaced, the nicks it cycles through.
#[derive(Debug, Clone)]
struct Completion {
    /// Char index where the completed word starts.
    start: usize,
    /// The nicks that matched what was typed, and the one shown now.
    matches: Vec<String>,
    at: usize,
    /// Whether the word started the line (then `: ` follows the nick, as in irssi).
    first: bool,
}

#[derive(Debug, Default, Clone)]
pub struct Editor {
    /// The line, one entry per character (so the cursor can never sit inside a UTF-8 sequence).
    chars: Vec<char>,
    /// Char index of the cursor, 0..=len.
    cursor: usize,
    /// Char index of the first visible character (the horizontal scroll).
    offset: usize,
    /// The last killed text, for Ctrl+Y.
    yank: String,
    history: Vec<String>,
    /// Position in `history` while browsing with Up/Down (`history.len()` = the draft).
    browsing: usize,
    /// What was being typed when Up was first pressed, restored by Down at the end.
    draft: String,
    completion: Option<Completion>,
}

impl Editor {
    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    #[cfg(test)]
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    pub fn at_end(&self) -> bool {
        self.cursor == self.chars.len()
    }

    fn edited(&mut self) {
        self.completion = None;
    }

    pub fn insert(&mut self, c: char) {
        // Controls (a pasted escape, a tab) would be sent as they are and drawn as nothing.
        let c = if c.is_control() { ' ' } else { c };
        self.chars.insert(self.cursor, c);
        self.cursor += 1;
        self.edited();
    }

    pub fn insert_str(&mut self, s: &str) {
        for c in s.chars() {
            self.insert(c);
        }
    }

    pub fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
        self.edited();
    }

    pub fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.chars.len());
        self.edited();
    }

    pub fn home(&mut self) {
        self.cursor = 0;
        self.edited();
    }

    pub fn end(&mut self) {
        self.cursor = self.chars.len();
        self.edited();
    }

    /// Alt+B / Ctrl+Left: to the start of this or the previous word.
    pub fn word_left(&mut self) {
        self.cursor = self.word_start(self.cursor);
        self.edited();
    }

    /// Alt+F / Ctrl+Right: past the end of this or the next word.
    pub fn word_right(&mut self) {
        let len = self.chars.len();
        let mut at = self.cursor;
        while at < len && self.chars[at].is_whitespace() {
            at += 1;
        }
        while at < len && !self.chars[at].is_whitespace() {
            at += 1;
        }
        self.cursor = at;
        self.edited();
    }

    fn word_start(&self, from: usize) -> usize {
        let mut at = from;
        while at > 0 && self.chars[at - 1].is_whitespace() {
            at -= 1;
        }
        while at > 0 && !self.chars[at - 1].is_whitespace() {
            at -= 1;
        }
        at
    }

    pub fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            self.chars.remove(self.cursor);
        }
        self.edited();
    }

    pub fn delete(&mut self) {
        if self.cursor < self.chars.len() {
            self.chars.remove(self.cursor);
        }
        self.edited();
    }

    fn kill(&mut self, from: usize, to: usize) {
        if from < to {
            self.yank = self.chars.drain(from..to).collect();
            self.cursor = from;
        }
        self.edited();
    }

    /// Ctrl+U: everything before the cursor.
    pub fn kill_to_start(&mut self) {
        self.kill(0, self.cursor);
    }

    /// Ctrl+K: everything from the cursor on.
    pub fn kill_to_end(&mut self) {
        self.kill(self.cursor, self.chars.len());
    }

    /// Ctrl+W: the word before the cursor (and the blanks after it).
    pub fn kill_word(&mut self) {
        self.kill(self.word_start(self.cursor), self.cursor);
    }

    /// Ctrl+Y: the last kill, at the cursor.
    pub fn yank(&mut self) {
        let text = self.yank.clone();
        self.insert_str(&text);
    }

    fn set(&mut self, text: &str) {
        self.chars = text.chars().collect();
        self.cursor = self.chars.len();
        self.offset = 0;
        self.edited();
    }

    /// Enter: the line, now empty, remembered for Up (unless blank or the same as the last).
    pub fn take(&mut self) -> String {
        let line = self.text();
        self.set("");
        if !line.trim().is_empty() && self.history.last() != Some(&line) {
            self.history.push(line.clone());
            if self.history.len() > HISTORY {
                self.history.remove(0);
            }
        }
        self.browsing = self.history.len();
        self.draft.clear();
        line
    }

    /// Up: the previous line sent (the line being typed is kept for Down).
    pub fn history_prev(&mut self) {
        if self.browsing == 0 {
            return;
        }
        if self.browsing == self.history.len() {
            self.draft = self.text();
        }
        self.browsing -= 1;
        let line = self.history[self.browsing].clone();
        self.set(&line);
    }

    /// Down: the next line sent, and after the last one what was being typed.
    pub fn history_next(&mut self) {
        if self.browsing >= self.history.len() {
            return;
        }
        self.browsing += 1;
        let line = match self.history.get(self.browsing) {
            Some(line) => line.clone(),
            None => std::mem::take(&mut self.draft),
        };
        self.set(&line);
    }

    /// Tab: completes the word before the cursor to a nick from `nicks` (most likely first);
    /// Tab again cycles through the other matches. A nick that starts the line gets `: `.
    pub fn complete(&mut self, nicks: &[String]) {
        if let Some(mut completion) = self.completion.take() {
            if completion.matches.len() > 1 {
                completion.at = (completion.at + 1) % completion.matches.len();
                self.replace_completion(&completion);
            }
            self.completion = Some(completion);
            return;
        }
        let start = self.word_start(self.cursor);
        let word: String = self.chars[start..self.cursor].iter().collect();
        if word.is_empty() {
            return;
        }
        let lower = word.to_lowercase();
        let matches: Vec<String> = nicks
            .iter()
            .filter(|n| n.to_lowercase().starts_with(&lower))
            .cloned()
            .collect();
        if matches.is_empty() {
            return;
        }
        let completion = Completion {
            start,
            matches,
            at: 0,
            first: start == 0,
        };
        self.replace_completion(&completion);
        self.completion = Some(completion);
    }

    fn replace_completion(&mut self, completion: &Completion) {
        let nick = &completion.matches[completion.at];
        let suffix = if completion.first { ": " } else { " " };
        let new: Vec<char> = nick.chars().chain(suffix.chars()).collect();
        let count = new.len();
        self.chars.splice(completion.start..self.cursor, new);
        self.cursor = completion.start + count;
    }

    /// What to draw in `width` columns: the visible part of the line and the cursor's column in
    /// it. Scrolls sideways so the cursor stays in view (with the last column kept for it at the
    /// end of the line).
    pub fn view(&mut self, width: usize) -> (String, usize) {
        let width = width.max(2);
        if self.cursor < self.offset {
            // Moving left past the view: show some context before the cursor, as irssi does.
            self.offset = self.cursor.saturating_sub(width / 3);
        }
        let before = |from: usize, to: usize, chars: &[char]| -> usize {
            chars[from..to].iter().map(|&c| char_width(c)).sum()
        };
        // The cursor's column must be < width (a wide character at the cursor needs two).
        let cursor_cell = self
            .chars
            .get(self.cursor)
            .map_or(1, |&c| char_width(c).max(1));
        while self.offset < self.cursor
            && before(self.offset, self.cursor, &self.chars) + cursor_cell > width
        {
            self.offset += 1;
        }
        let column = before(self.offset, self.cursor, &self.chars);
        let mut shown = String::new();
        let mut used = 0;
        for &c in &self.chars[self.offset..] {
            let w = char_width(c);
            if used + w > width {
                break;
            }
            used += w;
            shown.push(c);
        }
        (shown, column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(text: &str) -> Editor {
        let mut editor = Editor::default();
        editor.insert_str(text);
        editor
    }

    #[test]
    fn moves_and_edits_by_character() {
        let mut e = typed("héllo");
        e.left();
        e.left();
        e.insert('X');
        assert_eq!(e.text(), "hélXlo");
        e.home();
        e.delete();
        assert_eq!(e.text(), "élXlo");
        e.end();
        e.backspace();
        assert_eq!(e.text(), "élXl");
        e.right(); // at the end already
        e.insert('!');
        assert_eq!(e.text(), "élXl!");
        assert_eq!(e.cursor(), 5);
    }

    #[test]
    fn kills_and_yanks() {
        let mut e = typed("/quit now");
        e.kill_to_start();
        assert_eq!(e.text(), "");
        e.yank();
        assert_eq!(e.text(), "/quit now");
        e.kill_word();
        assert_eq!(e.text(), "/quit ");
        e.kill_word();
        assert_eq!(e.text(), "");
        let mut e = typed("keep cut");
        e.word_left();
        e.kill_to_end();
        assert_eq!(e.text(), "keep ");
        e.home();
        e.yank();
        assert_eq!(e.text(), "cutkeep ");
        e.home();
        e.word_right();
        assert_eq!(e.cursor(), 7);
    }

    #[test]
    fn history_goes_back_and_returns_to_the_draft() {
        let mut e = Editor::default();
        for line in ["one", "two", "two", "  "] {
            e.insert_str(line);
            e.take();
        }
        e.insert_str("draft");
        e.history_prev();
        assert_eq!(e.text(), "two", "a repeated line is kept once");
        e.history_prev();
        assert_eq!(e.text(), "one");
        e.history_prev();
        assert_eq!(e.text(), "one", "stops at the oldest");
        e.history_next();
        assert_eq!(e.text(), "two");
        e.history_next();
        assert_eq!(e.text(), "draft");
        e.history_next();
        assert_eq!(e.text(), "draft");
    }

    #[test]
    fn tab_completes_nicks_and_cycles() {
        let nicks = vec!["bob".to_string(), "Bobby".to_string(), "alice".to_string()];
        let mut e = typed("bo");
        e.complete(&nicks);
        assert_eq!(e.text(), "bob: ");
        e.complete(&nicks);
        assert_eq!(e.text(), "Bobby: ");
        e.complete(&nicks);
        assert_eq!(e.text(), "bob: ");
        let mut e = typed("hi AL");
        e.complete(&nicks);
        assert_eq!(e.text(), "hi alice ");
        let mut e = typed("zed");
        e.complete(&nicks);
        assert_eq!(e.text(), "zed");
    }

    #[test]
    fn wide_characters_take_two_columns() {
        assert_eq!(str_width("日本"), 4);
        assert_eq!(str_width("🎉"), 2);
        assert_eq!(str_width("é"), 1);
        let mut e = typed("日本語");
        assert_eq!(e.view(20), ("日本語".to_string(), 6));
        e.left();
        assert_eq!(e.view(20).1, 4);
    }

    #[test]
    fn the_view_scrolls_to_keep_the_cursor_visible() {
        let mut e = typed("abcdefghijklmnopqrstuvwxyz");
        let (shown, column) = e.view(10);
        assert_eq!(column, 9, "the cursor in the last column");
        assert_eq!(shown, "rstuvwxyz");
        e.home();
        let (shown, column) = e.view(10);
        assert_eq!((shown.as_str(), column), ("abcdefghij", 0));
        // Wide characters: the cursor never lands past the edge.
        let mut e = typed("日本語日本語");
        let (shown, column) = e.view(5);
        assert_eq!((shown.as_str(), column), ("本語", 4));
    }

    #[test]
    fn controls_are_not_inserted() {
        let e = typed("a\x1b[31mb");
        assert_eq!(e.text(), "a [31mb");
    }
}
