//! The chat's full-screen terminal UI (ratatui + crossterm), laid out and keyed as an irssi or
//! weechat user expects: numbered windows on the left (1 is the status window, then the rooms in
//! the order joined, each with its unread count and a `!` when a line names you), the current
//! window's lines (local time, wrapped with an indent, `-- more (N) --` in the status line while
//! scrolled up, N the lines below), a status line (time, nick, window, peers, activity) and an
//! input line that edits and scrolls sideways (see `editor.rs`). Replies to commands (help,
//! errors) show in the current window; peers joining and leaving and nick changes show in their
//! room.
//!
//! Keys: Enter sends; Ctrl+K/Ctrl+J, Ctrl+P/Ctrl+N, Alt+Left/Right or Ctrl/Alt+Up/Down go to the
//! previous/next window, Alt+1…9 and Alt+0 to window 1…10 (Ctrl+K kills to the end of the line
//! instead when there is text after the cursor, as in irssi; Ctrl+Y brings it back); PgUp/PgDn
//! scroll half a page; Up/Down recall sent lines; Tab completes a nick; Ctrl+L redraws; Ctrl+C
//! or /quit quits.

use std::time::Duration;

use anyhow::Result;
use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use futures_util::StreamExt;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph};
use ratatui::{DefaultTerminal, Frame};
use tokio::sync::mpsc;

use super::editor::{str_width, Editor};
use super::scrollback::{mentions, Entry, Kind, Laid, Part, Scrollback};
use super::{clock, now_ms, plural, short_id, Chat, Input, Update};

/// The status window, as chatwizard's `!status`.
const STATUS: &str = "!status";
/// The room list's width, when the terminal is wide enough to give it one.
const ROOMS_WIDTH: u16 = 20;

struct Window {
    /// A room, or `STATUS`.
    name: String,
    /// The join it shows (0 for the status window).
    gen: u64,
    lines: Scrollback,
    peers: usize,
    /// Lines said since the window was last looked at.
    unread: usize,
    /// One of them names the user.
    mentioned: bool,
}

impl Window {
    fn new(name: &str, gen: u64) -> Window {
        Window {
            name: name.to_string(),
            gen,
            lines: Scrollback::default(),
            peers: 0,
            unread: 0,
            mentioned: false,
        }
    }
}

struct Ui {
    /// The status window first, then the rooms in the order joined.
    windows: Vec<Window>,
    active: usize,
    editor: Editor,
    /// Rows of the lines pane at the last draw (PgUp/PgDn move half of it).
    page: usize,
}

/// What a key asks of the loop.
enum Flow {
    Go,
    Redraw,
    Quit,
}

impl Ui {
    fn new() -> Ui {
        Ui {
            windows: vec![Window::new(STATUS, 0)],
            active: 0,
            editor: Editor::default(),
            page: 10,
        }
    }

    fn index_of(&self, room: &str) -> Option<usize> {
        self.windows.iter().position(|w| w.name == room)
    }

    fn active_room(&self) -> Option<String> {
        (self.active > 0).then(|| self.windows[self.active].name.clone())
    }

    fn activate(&mut self, index: usize) {
        if index < self.windows.len() {
            self.active = index;
            let window = &mut self.windows[index];
            window.unread = 0;
            window.mentioned = false;
        }
    }

    fn cycle(&mut self, step: isize) {
        let n = self.windows.len() as isize;
        self.activate((self.active as isize + step).rem_euclid(n) as usize);
    }

    /// A local line in a window; in the status window it counts as unread.
    fn notice(&mut self, index: usize, time: i64, text: String) {
        let window = &mut self.windows[index];
        window.lines.insert(Entry::notice(time, text));
        if index == 0 && index != self.active {
            window.unread += 1;
        }
    }

    fn notice_here(&mut self, text: String) {
        self.notice(self.active, now_ms(), text);
    }

    /// Windows follow the rooms: a parted room's window goes (the one after it, or before it,
    /// becomes current), a room joined again gets a fresh window, a new room one at the end.
    fn sync(&mut self, chat: &Chat) {
        let shown = self.windows[self.active].name.clone();
        let at = self.active;
        self.windows.retain(|w| {
            w.name == STATUS
                || chat
                    .rooms
                    .get(&w.name)
                    .is_some_and(|room| room.gen == w.gen)
        });
        for (name, room) in &chat.rooms {
            if self.index_of(name).is_none() {
                self.windows.push(Window::new(name, room.gen));
            }
        }
        match self.index_of(&shown) {
            Some(index) => self.active = index,
            None => self.activate(at.min(self.windows.len() - 1)),
        }
    }

    fn update(&mut self, chat: &mut Chat, update: Update) {
        let Some(notices) = chat.observe(&update) else {
            return;
        };
        match update {
            Update::Line {
                room,
                key,
                writer,
                line,
                ..
            } => {
                let Some(index) = self.index_of(&room) else {
                    return;
                };
                for notice in notices {
                    self.notice(index, line.time, notice);
                }
                let own = chat.rooms.get(&room).is_some_and(|r| r.writer() == writer);
                let (kind, text) = match line.action() {
                    Some(action) => (Kind::Action, action.to_string()),
                    None => (Kind::Say, line.message.clone()),
                };
                let mention = !own && mentions(&line.message, &chat.nick);
                let entry = Entry {
                    time: line.time,
                    kind,
                    who: line.who,
                    text,
                    key: Some(key),
                    mention,
                    own,
                };
                let window = &mut self.windows[index];
                if window.lines.insert(entry) && index != self.active {
                    window.unread += 1;
                    window.mentioned |= mention;
                }
            }
            Update::Peer {
                room,
                id,
                joined,
                peers,
                reason,
                ..
            } => {
                let Some(index) = self.index_of(&room) else {
                    return;
                };
                self.windows[index].peers = peers;
                let text = if joined {
                    format!(
                        "peer {} joined {room} ({})",
                        short_id(&id),
                        plural(peers, "peer")
                    )
                } else {
                    let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
                    format!(
                        "peer {} left {room} ({}){why}",
                        short_id(&id),
                        plural(peers, "peer")
                    )
                };
                self.notice(index, now_ms(), text);
            }
            Update::Status { room, text } => {
                let index = room.and_then(|r| self.index_of(&r)).unwrap_or(0);
                self.notice(index, now_ms(), text);
            }
        }
    }

    async fn key(&mut self, chat: &mut Chat, key: KeyEvent) -> Flow {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        let e = &mut self.editor;
        match key.code {
            KeyCode::Char('c') if ctrl => return Flow::Quit,
            KeyCode::Char('l') if ctrl => return Flow::Redraw,
            KeyCode::Char('a') if ctrl => e.home(),
            KeyCode::Char('e') if ctrl => e.end(),
            KeyCode::Char('b') if ctrl => e.left(),
            KeyCode::Char('f') if ctrl => e.right(),
            KeyCode::Char('d') if ctrl => e.delete(),
            KeyCode::Char('h') if ctrl => e.backspace(),
            KeyCode::Char('u') if ctrl => e.kill_to_start(),
            KeyCode::Char('w') if ctrl => e.kill_word(),
            KeyCode::Char('y') if ctrl => e.yank(),
            // irssi kills to the end of the line; chatwizard goes to the previous room. Both,
            // by where the cursor is: what is killed comes back with Ctrl+Y.
            KeyCode::Char('k') if ctrl && !e.at_end() => e.kill_to_end(),
            KeyCode::Char('k' | 'p') if ctrl => self.cycle(-1),
            KeyCode::Char('j' | 'n') if ctrl => self.cycle(1),
            KeyCode::Char(d @ '0'..='9') if alt => {
                let number = d.to_digit(10).unwrap_or(0) as usize;
                self.activate(if number == 0 { 9 } else { number - 1 });
            }
            KeyCode::Char('b') if alt => e.word_left(),
            KeyCode::Char('f') if alt => e.word_right(),
            KeyCode::Left | KeyCode::Up if alt => self.cycle(-1),
            KeyCode::Right | KeyCode::Down if alt => self.cycle(1),
            KeyCode::Up if ctrl => self.cycle(-1),
            KeyCode::Down if ctrl => self.cycle(1),
            KeyCode::Left if ctrl => e.word_left(),
            KeyCode::Right if ctrl => e.word_right(),
            KeyCode::Left => e.left(),
            KeyCode::Right => e.right(),
            KeyCode::Home => e.home(),
            KeyCode::End => e.end(),
            KeyCode::Backspace => e.backspace(),
            KeyCode::Delete => e.delete(),
            KeyCode::Up => e.history_prev(),
            KeyCode::Down => e.history_next(),
            KeyCode::PageUp => {
                let rows = (self.page / 2).max(1);
                self.windows[self.active].lines.scroll_up(rows);
            }
            KeyCode::PageDown => {
                let rows = (self.page / 2).max(1);
                self.windows[self.active].lines.scroll_down(rows);
            }
            KeyCode::Tab => {
                let mut nicks = self
                    .active_room()
                    .map(|room| chat.names(&room))
                    .unwrap_or_default();
                nicks.retain(|n| *n != chat.nick);
                self.editor.complete(&nicks);
            }
            KeyCode::Enter => return self.submit(chat).await,
            KeyCode::Char(c) if !ctrl && !alt => e.insert(c),
            _ => {}
        }
        Flow::Go
    }

    async fn submit(&mut self, chat: &mut Chat) -> Flow {
        let line = self.editor.take();
        let Some(input) = Input::parse(&line) else {
            return Flow::Go;
        };
        self.windows[self.active].lines.follow();
        if input == Input::Clear {
            self.windows[self.active].lines.clear();
            return Flow::Go;
        }
        let join = matches!(input, Input::Join(_));
        chat.current = self.active_room();
        let reply = chat.handle(input).await;
        self.sync(chat);
        if join {
            if let Some(index) = chat.current.as_deref().and_then(|r| self.index_of(r)) {
                self.activate(index);
            }
        }
        for message in reply.messages {
            self.notice_here(message);
        }
        if reply.quit {
            Flow::Quit
        } else {
            Flow::Go
        }
    }
}

/// Runs the UI until /quit or Ctrl+C.
pub async fn run(chat: &mut Chat, mut updates: mpsc::UnboundedReceiver<Update>) -> Result<()> {
    let mut terminal = ratatui::init();
    let result = run_in(&mut terminal, chat, &mut updates).await;
    ratatui::restore();
    result
}

async fn run_in(
    terminal: &mut DefaultTerminal,
    chat: &mut Chat,
    updates: &mut mpsc::UnboundedReceiver<Update>,
) -> Result<()> {
    let mut ui = Ui::new();
    ui.notice(
        0,
        now_ms(),
        format!("you are {}; /help for commands and keys", chat.nick),
    );
    ui.sync(chat);
    if let Some(index) = chat.current.as_deref().and_then(|r| ui.index_of(r)) {
        ui.activate(index);
    }
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let active = ui.active;
        ui.windows[active].unread = 0;
        ui.windows[active].mentioned = false;
        chat.current = ui.active_room();
        terminal.draw(|frame| draw(frame, chat, &mut ui))?;
        tokio::select! {
            _ = tick.tick() => {}
            Some(update) = updates.recv() => {
                ui.update(chat, update);
                // A room's history comes as a burst: take all of it before drawing again.
                while let Ok(update) = updates.try_recv() {
                    ui.update(chat, update);
                }
            }
            event = keys.next() => match event {
                Some(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => {
                    match ui.key(chat, key).await {
                        Flow::Go => {}
                        Flow::Redraw => terminal.clear()?,
                        Flow::Quit => return Ok(()),
                    }
                }
                Some(Ok(Event::Paste(text))) => ui.editor.insert_str(&text),
                // A resize is drawn at the top of the loop; the scrollback keeps its lines.
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
                None => return Ok(()),
            },
        }
    }
}

/// A nick's colour, the same for the same nick.
fn nick_color(nick: &str) -> Color {
    const COLORS: [Color; 6] = [
        Color::Cyan,
        Color::Green,
        Color::Magenta,
        Color::Blue,
        Color::LightRed,
        Color::LightGreen,
    ];
    let hash = nick
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    COLORS[hash as usize % COLORS.len()]
}

fn draw(frame: &mut Frame, chat: &Chat, ui: &mut Ui) {
    let [main, status, input] = Layout::vertical([
        Constraint::Min(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let list_width = if main.width >= 50 { ROOMS_WIDTH } else { 0 };
    let [rooms_area, lines_area] =
        Layout::horizontal([Constraint::Length(list_width), Constraint::Min(1)]).areas(main);
    if list_width > 0 {
        draw_rooms(frame, ui, rooms_area);
    }
    let more = draw_lines(frame, ui, lines_area);
    draw_status(frame, chat, ui, status, more);

    // The input line: `[#room] ` then the editor's view, the cursor by display width.
    let prompt = format!("[{}] ", ui.windows[ui.active].name);
    let prompt_width = str_width(&prompt) as u16;
    let room = (input.width.saturating_sub(prompt_width)) as usize;
    let (shown, column) = ui.editor.view(room);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(prompt, Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(shown),
        ])),
        input,
    );
    let x = input.x + prompt_width + column as u16;
    frame.set_cursor_position((x.min(input.right().saturating_sub(1)), input.y));
}

/// `1 !status`, `2 #room (3)`, `3 #other (1!)`: the current one reversed, unread ones yellow,
/// those that name you magenta.
fn draw_rooms(frame: &mut Frame, ui: &Ui, area: Rect) {
    let items: Vec<ListItem> = ui
        .windows
        .iter()
        .enumerate()
        .map(|(index, window)| {
            let mut text = format!("{:>2} {}", index + 1, window.name);
            let mut style = Style::default();
            if index == ui.active {
                style = style.add_modifier(Modifier::REVERSED);
            } else if window.unread > 0 {
                let mark = if window.mentioned { "!" } else { "" };
                text.push_str(&format!(" ({}{mark})", window.unread));
                let color = if window.mentioned {
                    Color::Magenta
                } else {
                    Color::Yellow
                };
                style = style.add_modifier(Modifier::BOLD).fg(color);
            }
            ListItem::new(Span::styled(text, style))
        })
        .collect();
    frame.render_widget(
        List::new(items).block(Block::default().borders(Borders::RIGHT)),
        area,
    );
}

/// The current window's rows; how many lines are below the view, and whether the first line is
/// at the top.
fn draw_lines(frame: &mut Frame, ui: &mut Ui, area: Rect) -> (usize, bool) {
    ui.page = area.height as usize;
    let window = &mut ui.windows[ui.active];
    let screen = window.lines.rows(area.width as usize, area.height as usize);
    let mut lines = Vec::with_capacity(screen.rows.len());
    let mut laid: Option<(usize, Laid)> = None;
    for row in &screen.rows {
        if laid.as_ref().map(|l| l.0) != Some(row.entry) {
            laid = Some((row.entry, window.lines.line(row.entry)));
        }
        let Some((_, (text, parts))) = &laid else {
            continue;
        };
        let entry = &window.lines.entries()[row.entry];
        let mut spans = vec![Span::raw(" ".repeat(row.indent))];
        for (range, part) in parts {
            let start = range.start.max(row.range.start);
            let end = range.end.min(row.range.end);
            if start >= end {
                continue;
            }
            let style = match part {
                Part::Time => Style::default().fg(Color::DarkGray),
                Part::Nick => {
                    let style = Style::default().fg(nick_color(&entry.who));
                    if entry.own {
                        style.add_modifier(Modifier::BOLD)
                    } else {
                        style
                    }
                }
                Part::Marker if entry.kind == Kind::Notice => Style::default().fg(Color::Blue),
                Part::Marker => Style::default(),
                Part::Text if entry.mention => Style::default()
                    .fg(Color::Yellow)
                    .add_modifier(Modifier::BOLD),
                Part::Text if entry.kind == Kind::Notice => Style::default().fg(Color::Gray),
                Part::Text => Style::default(),
            };
            spans.push(Span::styled(text[start..end].to_string(), style));
        }
        lines.push(Line::from(spans));
    }
    frame.render_widget(Paragraph::new(lines), area);
    (screen.lines_below, screen.at_top)
}

/// `[12:00:00] [nick] [2:#room] 1 peer [Act: 3,4!] -- more (5) --`: while scrolled up, how many
/// lines are below (weechat's `-MORE(5)-`), and `top` when the first line is at the top.
fn draw_status(frame: &mut Frame, chat: &Chat, ui: &Ui, area: Rect, (more, top): (usize, bool)) {
    let window = &ui.windows[ui.active];
    let mut text = format!(
        " [{}] [{}] [{}:{}] ",
        clock(now_ms()),
        chat.nick,
        ui.active + 1,
        window.name
    );
    if ui.active == 0 {
        text.push_str(&plural(chat.rooms.len(), "room"));
    } else {
        text.push_str(&plural(window.peers, "peer"));
    }
    let act: Vec<String> = ui
        .windows
        .iter()
        .enumerate()
        .filter(|(_, w)| w.unread > 0)
        .map(|(i, w)| format!("{}{}", i + 1, if w.mentioned { "!" } else { "" }))
        .collect();
    if !act.is_empty() {
        text.push_str(&format!(" [Act: {}]", act.join(",")));
    }
    if more > 0 {
        let top = if top { "top, " } else { "" };
        text.push_str(&format!(" -- {top}more ({more}) --"));
    }
    frame.render_widget(
        Paragraph::new(text).style(Style::default().bg(Color::Blue).fg(Color::White)),
        area,
    );
}
