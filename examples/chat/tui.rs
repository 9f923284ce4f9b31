//! The chat's full-screen terminal UI (ratatui): rooms on the left, the current room's lines
//! sorted by time, a status line with the time, nick and peer count, and an input line, as in
//! chatwizard. Keys: Enter sends, PgUp/PgDn scroll, Ctrl+Up/Ctrl+Down (or Ctrl+K/Ctrl+J) switch
//! rooms, Ctrl+C or /quit quits.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use crossterm::event::{Event, EventStream, KeyCode, KeyEventKind, KeyModifiers};
use futures_util::StreamExt;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph};
use ratatui::Frame;
use tokio::sync::mpsc;

use super::{clock, Chat, ChatLine, Input, Update};

/// The local pseudo-room for status and help, as chatwizard's `!status`.
const STATUS: &str = "!status";

/// Lines kept per room in the UI (the log keeps everything).
const MAX_LINES: usize = 10_000;

#[derive(Default)]
struct RoomView {
    /// Sorted by time, then nick, then text (a line appears once per log entry).
    lines: Vec<ChatLine>,
    peers: usize,
    unread: bool,
}

struct Ui {
    views: BTreeMap<String, RoomView>,
    input: String,
    /// Lines scrolled up from the bottom.
    scroll: usize,
}

impl Ui {
    fn status(&mut self, text: String) {
        let view = self.views.entry(STATUS.to_string()).or_default();
        view.lines.push(ChatLine {
            time: chrono::Utc::now().timestamp_millis(),
            who: "!info".into(),
            message: text,
        });
    }

    fn add_line(&mut self, room: &str, line: ChatLine, current: Option<&str>) {
        let view = self.views.entry(room.to_string()).or_default();
        let at = view.lines.partition_point(|l| *l <= line);
        view.lines.insert(at, line);
        if view.lines.len() > MAX_LINES {
            view.lines.remove(0);
        }
        if current != Some(room) {
            view.unread = true;
        }
    }
}

/// Runs the UI until /quit or Ctrl+C.
pub async fn run(chat: &mut Chat, mut updates: mpsc::UnboundedReceiver<Update>) -> Result<()> {
    let mut terminal = ratatui::init();
    let mut ui = Ui {
        views: BTreeMap::new(),
        input: String::new(),
        scroll: 0,
    };
    ui.status(format!("you are {}; {}", chat.nick, super::HELP));
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let result = loop {
        for room in chat.rooms.keys() {
            ui.views.entry(room.clone()).or_default();
        }
        if let Some(current) = &chat.current {
            if let Some(view) = ui.views.get_mut(current) {
                view.unread = false;
            }
        }
        if let Err(error) = terminal.draw(|frame| draw(frame, chat, &ui)) {
            break Err(error.into());
        }
        tokio::select! {
            _ = tick.tick() => {}
            Some(update) = updates.recv() => match update {
                Update::Line { room, line } => ui.add_line(&room, line, chat.current.as_deref()),
                Update::Peers { room, peers } => ui.views.entry(room).or_default().peers = peers,
                Update::Status(text) => ui.status(text),
            },
            event = keys.next() => {
                let Some(Ok(Event::Key(key))) = event else { continue };
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
                match key.code {
                    KeyCode::Char('c') if ctrl => break Ok(()),
                    KeyCode::Char('k') | KeyCode::Up if ctrl => cycle(chat, -1),
                    KeyCode::Char('j') | KeyCode::Down if ctrl => cycle(chat, 1),
                    KeyCode::PageUp => ui.scroll += 10,
                    KeyCode::PageDown => ui.scroll = ui.scroll.saturating_sub(10),
                    KeyCode::Backspace => {
                        ui.input.pop();
                    }
                    KeyCode::Enter => {
                        let line = std::mem::take(&mut ui.input);
                        let Some(input) = Input::parse(&line) else { continue };
                        ui.scroll = 0;
                        let (message, quit) = chat.handle(input).await;
                        if let Some(message) = message {
                            ui.status(message);
                        }
                        if quit {
                            break Ok(());
                        }
                    }
                    KeyCode::Char(c) if !ctrl => ui.input.push(c),
                    _ => {}
                }
            }
        }
    };
    ratatui::restore();
    result
}

fn cycle(chat: &mut Chat, step: isize) {
    let rooms: Vec<&String> = chat.rooms.keys().collect();
    if rooms.is_empty() {
        return;
    }
    let at = chat
        .current
        .as_ref()
        .and_then(|c| rooms.iter().position(|r| *r == c))
        .unwrap_or(0) as isize;
    let next = (at + step).rem_euclid(rooms.len() as isize) as usize;
    chat.current = Some(rooms[next].clone());
}

fn draw(frame: &mut Frame, chat: &Chat, ui: &Ui) {
    let [main, status, input] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let [rooms_area, lines_area] =
        Layout::horizontal([Constraint::Length(20), Constraint::Min(10)]).areas(main);

    // Rooms: the current one reversed, those with unread lines bold.
    let items: Vec<ListItem> = ui
        .views
        .iter()
        .map(|(name, view)| {
            let mut style = Style::default();
            if chat.current.as_deref() == Some(name.as_str()) {
                style = style.add_modifier(Modifier::REVERSED);
            } else if view.unread {
                style = style.add_modifier(Modifier::BOLD).fg(Color::Yellow);
            }
            ListItem::new(Span::styled(name.clone(), style))
        })
        .collect();
    frame.render_widget(
        List::new(items).block(Block::default().borders(Borders::RIGHT)),
        rooms_area,
    );

    // The current room's lines, or !status when no room is joined.
    let shown = chat.current.as_deref().unwrap_or(STATUS);
    let view = ui.views.get(shown);
    let height = lines_area.height as usize;
    let lines: Vec<Line> = view
        .map(|v| {
            let end = v.lines.len().saturating_sub(ui.scroll);
            let start = end.saturating_sub(height);
            v.lines[start..end]
                .iter()
                .map(|l| {
                    Line::from(vec![
                        Span::styled(clock(l.time), Style::default().fg(Color::DarkGray)),
                        Span::raw(" <"),
                        Span::styled(l.who.clone(), Style::default().fg(Color::Cyan)),
                        Span::raw("> "),
                        Span::raw(l.message.clone()),
                    ])
                })
                .collect()
        })
        .unwrap_or_default();
    frame.render_widget(Paragraph::new(lines), lines_area);

    let peers = view.map(|v| v.peers).unwrap_or(0);
    let now = clock(chrono::Utc::now().timestamp_millis());
    frame.render_widget(
        Paragraph::new(format!("[{now}] [{}] {peers} peers", chat.nick))
            .style(Style::default().bg(Color::Blue).fg(Color::White)),
        status,
    );
    let prompt = format!("[{shown}] {}", ui.input);
    let cursor_x = input.x + prompt.chars().count() as u16;
    frame.render_widget(Paragraph::new(prompt), input);
    frame.set_cursor_position((cursor_x.min(input.right().saturating_sub(1)), input.y));
}
