//! The interactive softphone: a terminal UI over the SDK. It shows who you
//! are, the connection (reconnecting included), the call, each member with
//! a live level bar from `onUserVoiceVolume` and network quality bars (the
//! network quality reports), mute and hands-free, and a
//! scrolling event log; keys call, accept, reject, hang up, mute, switch
//! hands-free and quit. An incoming call rings the terminal bell.
//!
//! The screen is redrawn from [`Phone`], a plain model: the call and the
//! connection come from the SDK's own status before every frame (never
//! from a subset of events, which once left an answered invitation on the
//! screen), the levels and the log from events, mute and hands-free from
//! keys.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use calling_facade::{
    CallStatus, CallType, CallingEvent, EventStream, NetworkQuality, SessionStatus, TRTCCalling,
    VoiceProcessing,
};
use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph};

/// The log keeps this many lines.
const LOG_LINES: usize = 200;

/// A member of the call as the screen shows it.
#[derive(Debug, Default)]
struct Member {
    level: u8,
    audio: bool,
    reconnecting: bool,
    quality: NetworkQuality,
}

#[derive(Debug)]
enum CallView {
    Idle,
    Incoming { from: String, others: Vec<String> },
    Calling(Vec<String>),
    Answering,
    InCall,
}

/// What the screen shows.
struct Phone {
    me: String,
    server: String,
    reconnecting: bool,
    call: CallView,
    members: BTreeMap<String, Member>,
    my_level: u8,
    my_quality: NetworkQuality,
    muted: bool,
    hands_free: bool,
    /// The voice processing turned off, as a mark ("" when all is on).
    processing_off: String,
    log: VecDeque<String>,
    /// The user ids being typed after `c`.
    typing: Option<String>,
    quit: bool,
}

impl Phone {
    fn note(&mut self, line: String) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    /// Takes an event in; `true` when it should ring the bell.
    fn on_event(&mut self, event: &CallingEvent) -> bool {
        let mut ring = false;
        match event {
            CallingEvent::Invited { .. } => ring = true,
            CallingEvent::UserAudioAvailable { user_id, available } => {
                if let Some(member) = self.members.get_mut(user_id.as_str()) {
                    member.audio = *available;
                }
            }
            CallingEvent::UserVoiceVolume { user_volumes, .. } => {
                for volume in user_volumes {
                    if volume.user_id.as_str() == self.me {
                        self.my_level = volume.volume;
                    } else if let Some(member) = self.members.get_mut(volume.user_id.as_str()) {
                        member.level = volume.volume;
                    }
                }
                // Too frequent for the log.
                return false;
            }
            CallingEvent::UserReconnecting { user_id }
            | CallingEvent::UserReconnected { user_id } => {
                let back = matches!(event, CallingEvent::UserReconnected { .. });
                if let Some(member) = self.members.get_mut(user_id.as_str()) {
                    member.reconnecting = !back;
                }
            }
            CallingEvent::NetworkQuality { local, remote } => {
                self.my_quality = *local;
                for member in remote {
                    if let Some(shown) = self.members.get_mut(member.user_id.as_str()) {
                        shown.quality = member.quality;
                    }
                }
                // The bars show it.
                return false;
            }
            CallingEvent::HandledElsewhere { answer, .. } => {
                self.note(format!(
                    "the invitation was {answer} (another device of yours)"
                ));
                return false;
            }
            CallingEvent::InviteeOffline { user_id } => {
                self.note(format!(
                    "{user_id} is offline: it rings if they log in before the invitation times out"
                ));
                return false;
            }
            CallingEvent::MemberIdentity {
                user_id,
                safety_number,
                changed,
            } => {
                if *changed {
                    self.note(format!(
                        "{user_id}'s identity key CHANGED (a new device, or someone in between): compare again"
                    ));
                }
                self.note(format!(
                    "safety number with {user_id}: {safety_number} (read it to them: it matches theirs)"
                ));
                return false;
            }
            _ => {}
        }
        self.note(event.to_string());
        ring
    }

    /// Takes the SDK's status in: the call, its members, the connection.
    fn sync(&mut self, status: &SessionStatus) {
        self.reconnecting = status.reconnecting;
        let names = |users: &[calling_facade::UserId]| -> Vec<String> {
            users.iter().map(ToString::to_string).collect()
        };
        let members: &[calling_facade::UserId] = match &status.call {
            CallStatus::InCall { members, .. } => members,
            _ => &[],
        };
        self.members
            .retain(|user, _| members.iter().any(|member| member.as_str() == user));
        for member in members {
            self.members
                .entry(member.to_string())
                .or_insert_with(|| Member {
                    audio: true,
                    ..Member::default()
                });
        }
        self.call = match &status.call {
            CallStatus::Ringing { sponsor, others } => CallView::Incoming {
                from: sponsor.to_string(),
                others: names(others),
            },
            CallStatus::Calling { invitees } => CallView::Calling(names(invitees)),
            CallStatus::Accepting => CallView::Answering,
            CallStatus::InCall { .. } => CallView::InCall,
            _ => CallView::Idle,
        };
        if !matches!(self.call, CallView::InCall) {
            self.my_level = 0;
            self.my_quality = NetworkQuality::Unknown;
        }
    }

    fn call_line(&self) -> String {
        match &self.call {
            CallView::Idle => "idle — c: call someone".into(),
            CallView::Incoming { from, others } if others.is_empty() => {
                format!(">>> incoming call from {from} — a: accept, r: reject <<<")
            }
            CallView::Incoming { from, others } => format!(
                ">>> incoming call from {from} (with {}) — a: accept, r: reject <<<",
                others.join(", ")
            ),
            CallView::Calling(users) if users.is_empty() => "calling… — h: cancel".into(),
            CallView::Calling(users) => format!("calling {}… — h: cancel", users.join(", ")),
            CallView::Answering => "answering…".into(),
            CallView::InCall if self.reconnecting => {
                "in a call, connection lost: reconnecting — h: hang up now".into()
            }
            CallView::InCall => "in a call — h: hang up, c: invite".into(),
        }
    }

    fn member_lines(&self) -> Vec<Line<'static>> {
        let mut lines = vec![Line::from(format!(
            "{:<16} {} {:>3} {}  {}  {}{}",
            format!("{} (you)", self.me),
            bar(self.my_level),
            self.my_level,
            quality_bars(self.my_quality),
            if self.muted { "MUTED" } else { "mic on" },
            if self.hands_free {
                "hands-free"
            } else {
                "private"
            },
            self.processing_off,
        ))];
        for (user, member) in &self.members {
            let mut state = Vec::new();
            if !member.audio {
                state.push("muted");
            }
            if member.reconnecting {
                state.push("reconnecting");
            } else if self.reconnecting {
                // Our own connection is down: nothing is heard from anyone.
                state.push("not heard: we are reconnecting");
            }
            lines.push(Line::from(format!(
                "{user:<16} {} {:>3} {}  {}",
                bar(member.level),
                member.level,
                quality_bars(member.quality),
                state.join(", ")
            )));
        }
        lines
    }

    fn draw(&self, frame: &mut ratatui::Frame<'_>) {
        let [header, call, members, log, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(u16::try_from(self.members.len()).unwrap_or(16) + 3),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let connection = if self.reconnecting {
            "RECONNECTING"
        } else {
            "connected"
        };
        frame.render_widget(
            Paragraph::new(format!(
                "OpenCalling — {} @ {} — {connection}",
                self.me, self.server
            ))
            .style(Style::default().add_modifier(Modifier::BOLD)),
            header,
        );
        frame.render_widget(Paragraph::new(self.call_line()), call);
        frame.render_widget(
            Paragraph::new(self.member_lines())
                .block(Block::default().borders(Borders::ALL).title("call")),
            members,
        );
        let shown = usize::from(log.height.saturating_sub(2));
        let lines: Vec<Line<'_>> = self
            .log
            .iter()
            .skip(self.log.len().saturating_sub(shown))
            .map(|line| Line::from(line.as_str()))
            .collect();
        frame.render_widget(
            Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title("events")),
            log,
        );
        let help = match &self.typing {
            Some(text) => format!("call (user ids, Enter to dial, Esc to cancel): {text}_"),
            None => {
                "c call · a accept · r reject · h hang up · m mute · f hands-free · q quit".into()
            }
        };
        frame.render_widget(Paragraph::new(help), footer);
    }
}

/// A level (0–100) as a 10-cell bar.
fn bar(level: u8) -> String {
    let full = usize::from(level.min(100)).div_ceil(10);
    format!("[{}{}]", "█".repeat(full), " ".repeat(10 - full))
}

/// A network quality as a phone shows it: five bars for excellent down to
/// one for very bad; "down" and "?" (not measured yet) in words.
fn quality_bars(quality: NetworkQuality) -> String {
    let bars = match quality {
        NetworkQuality::Unknown => return "net ?    ".into(),
        NetworkQuality::Down => return "net down ".into(),
        NetworkQuality::Excellent => 5,
        NetworkQuality::Good => 4,
        NetworkQuality::Poor => 3,
        NetworkQuality::Bad => 2,
        NetworkQuality::VeryBad => 1,
    };
    format!("net {}{}", "▮".repeat(bars), "▯".repeat(5 - bars))
}

/// What a key asks of the SDK.
enum Action {
    Call(Vec<String>),
    Accept,
    Reject,
    Hangup,
}

impl Phone {
    fn on_key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> Option<Action> {
        if let Some(text) = &mut self.typing {
            match code {
                KeyCode::Enter => {
                    let users: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
                    self.typing = None;
                    if !users.is_empty() {
                        return Some(Action::Call(users));
                    }
                }
                KeyCode::Esc => self.typing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) => text.push(c),
                _ => {}
            }
            return None;
        }
        match code {
            KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => self.quit = true,
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('c') => self.typing = Some(String::new()),
            KeyCode::Char('a') => return Some(Action::Accept),
            KeyCode::Char('r') => return Some(Action::Reject),
            KeyCode::Char('h') => return Some(Action::Hangup),
            KeyCode::Char('m') => self.muted = !self.muted,
            KeyCode::Char('f') => self.hands_free = !self.hands_free,
            _ => {}
        }
        None
    }
}

/// Carries out an action on the SDK; says how it went, for the log.
async fn perform(calling: Arc<TRTCCalling>, action: Action) -> String {
    let result = match &action {
        Action::Call(users) => {
            let mut outcome = Ok(());
            for user in users {
                outcome = calling.call(user, CallType::Audio).await;
                if outcome.is_err() {
                    break;
                }
            }
            outcome
        }
        Action::Accept => calling.accept().await,
        Action::Reject => calling.reject().await,
        Action::Hangup => calling.hangup().await,
    };
    let what = match &action {
        Action::Call(users) => format!("call {}", users.join(" ")),
        Action::Accept => "accept".into(),
        Action::Reject => "reject".into(),
        Action::Hangup => "hang up".into(),
    };
    match result {
        Ok(()) => format!("{what}: ok"),
        Err(error) => format!("{what}: {} ({})", error.desc, error.code.as_i32()),
    }
}

/// What the screen marks of the voice processing that is off: a speaker
/// without echo cancellation is what the other side notices first.
fn processing_off(voice: VoiceProcessing) -> String {
    let off: Vec<&str> = [
        (voice.echo_cancellation, "NO ECHO CANCELLATION"),
        (voice.noise_suppression, "no noise suppression"),
        (voice.auto_gain, "no auto gain"),
    ]
    .into_iter()
    .filter(|(on, _)| !on)
    .map(|(_, mark)| mark)
    .collect();
    if off.is_empty() {
        String::new()
    } else {
        format!("  [{}]", off.join(", "))
    }
}

/// Runs the softphone until `q`; the terminal is restored on the way out.
pub(crate) async fn run(
    calling: Arc<TRTCCalling>,
    mut events: EventStream,
    me: String,
    server: String,
) -> Result<(), String> {
    let mut terminal = ratatui::try_init().map_err(|error| format!("no terminal: {error}"))?;
    let (keys_tx, mut keys) = tokio::sync::mpsc::unbounded_channel();
    // crossterm's reads block: a thread of their own, for the whole run.
    std::thread::spawn(move || {
        while let Ok(event) = crossterm::event::read() {
            if keys_tx.send(event).is_err() {
                return;
            }
        }
    });
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let mut phone = Phone {
        me,
        server,
        reconnecting: false,
        call: CallView::Idle,
        members: BTreeMap::new(),
        my_level: 0,
        my_quality: NetworkQuality::Unknown,
        muted: calling.is_mic_muted(),
        hands_free: calling.is_hands_free(),
        processing_off: processing_off(calling.options().voice_processing_in_effect()),
        log: VecDeque::new(),
        typing: None,
        quit: false,
    };
    phone.note("logged in".into());
    let mut redraw = tokio::time::interval(Duration::from_millis(100));
    let outcome = loop {
        phone.sync(&calling.status());
        if let Err(error) = terminal.draw(|frame| phone.draw(frame)) {
            break Err(format!("cannot draw: {error}"));
        }
        if phone.quit {
            break Ok(());
        }
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    if phone.on_event(&event) {
                        // The terminal bell: an incoming call is hard to miss.
                        let _ = std::io::stdout().write_all(b"\x07");
                        let _ = std::io::stdout().flush();
                    }
                }
                None => break Err("the SDK stopped".into()),
            },
            key = keys.recv() => match key {
                Some(Event::Key(key)) if key.kind == KeyEventKind::Press => {
                    let (muted, hands_free) = (phone.muted, phone.hands_free);
                    if let Some(action) = phone.on_key(key.code, key.modifiers) {
                        let (calling, done_tx) = (Arc::clone(&calling), done_tx.clone());
                        tokio::spawn(async move {
                            let _ = done_tx.send(perform(calling, action).await);
                        });
                    }
                    if phone.muted != muted {
                        calling.set_mic_mute(phone.muted);
                    }
                    if phone.hands_free != hands_free {
                        calling.set_hands_free(phone.hands_free);
                    }
                }
                Some(_) => {}
                None => break Ok(()),
            },
            Some(result) = done.recv() => phone.note(result),
            _ = redraw.tick() => {}
        }
    };
    ratatui::restore();
    outcome
}
