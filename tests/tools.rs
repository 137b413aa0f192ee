//! Special tokens and tools through the daemon, with real commands: a client's `{"say": ...}`
//! makes the model say a bound word; the word fires its token's event and command; the
//! command's answer comes back as an event and is said by the model in turn (its word appears
//! in the inner monologue). A slow command is an event with an error, and the session goes on.

mod common;

use std::time::Duration;

use common::live::{FRAME, Running, test_settings};
use futures_util::{SinkExt, StreamExt};
use kokichi::daemon::tools::ToolAction;
use tokio_tungstenite::tungstenite::Message;

fn action(command: &[&str], timeout_ms: u64) -> ToolAction {
    ToolAction { command: command.iter().map(|s| s.to_string()).collect(), timeout_ms, ..ToolAction::default() }
}

/// Streams silence for `frames` frames, sending `texts` at the given frames; returns the text
/// messages received (pieces, events, warnings) and the audio frames counted.
async fn session(addr: std::net::SocketAddr, frames: usize, texts: &[(usize, &str)]) -> (Vec<String>, usize) {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/pcm")).await.expect("connect");
    let (mut tx, mut rx) = ws.split();
    let texts: Vec<(usize, String)> = texts.iter().map(|(f, t)| (*f, t.to_string())).collect();
    let send = async move {
        let silence: Vec<u8> = vec![0u8; FRAME * 4];
        // Sending stops once the daemon has closed the session.
        'frames: for f in 0..frames {
            for (_, t) in texts.iter().filter(|(at, _)| *at == f) {
                if tx.send(Message::Text(t.clone().into())).await.is_err() {
                    break 'frames;
                }
            }
            if tx.send(Message::Binary(silence.clone().into())).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        tx
    };
    let recv = async {
        let (mut got, mut audio) = (Vec::new(), 0);
        while audio < frames {
            match tokio::time::timeout(Duration::from_secs(10), rx.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => got.push(t.to_string()),
                Ok(Some(Ok(Message::Binary(_)))) => audio += 1,
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        (got, audio)
    };
    let (mut tx, got) = tokio::join!(send, recv);
    let _ = tx.close().await;
    got
}

fn events(messages: &[String]) -> Vec<serde_json::Value> {
    messages.iter().filter_map(|m| serde_json::from_str::<serde_json::Value>(m).ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_tokens_run_their_commands_and_the_answer_is_said() {
    let mut settings = test_settings("tools", "daemon");
    settings.tools.insert("▁time".into(), action(&["echo", "six"], 2000));
    settings.tools.insert("▁nine".into(), action(&["sleep", "5"], 200));
    settings.tools.insert("▁before".into(), ToolAction::default());
    let d = Running::start(settings).await;

    let frames = 45;
    let (got, audio) = session(d.addr, frames, &[(1, r#"{"say": "time"}"#), (25, r#"{"say": "nine before"}"#)]).await;
    assert_eq!(audio, frames, "the session went on: {got:?}");
    let ev = events(&got);
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| ev.iter().position(pred);
    let said = find(&|e| e["event"] == "say" && e["said"] == "time" && e["pieces"] == 1).expect("say reported");
    let fired = find(&|e| e["event"] == "token" && e["token"] == "▁time").expect("the bound token fired");
    let answered = find(&|e| e["event"] == "tool" && e["token"] == "▁time" && e["answer"] == "six").expect("answer");
    let said_answer = find(&|e| e["event"] == "tool" && e["said"] == "six" && e["pieces"] == 1).expect("answer said");
    assert!(said < fired && fired < answered && answered < said_answer, "order: {ev:?}");
    // The answer's word in the inner monologue, after the tool answered.
    let answer_at = got.iter().position(|m| m.contains("\"answer\":\"six\"")).unwrap_or(usize::MAX);
    assert!(got[answer_at..].iter().any(|m| m == " six"), "the model did not say the answer: {got:?}");
    // A slow command: an event with an error, no answer said; an event-only token: its event.
    assert!(
        ev.iter().any(|e| e["event"] == "tool"
            && e["token"] == "▁nine"
            && e["error"].as_str().is_some_and(|s| s.contains("timed out"))),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| e["event"] == "token" && e["token"] == "▁before"), "{ev:?}");
    assert!(!ev.iter().any(|e| e["token"] == "▁before" && e["event"] == "tool"), "an event-only token ran something");

    // Bad commands: a word the vocabulary lacks is an event with an error; a text that is not
    // a command closes the client with a message saying what a text message is.
    let (got, _) = session(d.addr, 4, &[(0, r#"{"say": "six ☃"}"#)]).await;
    let ev = events(&got);
    assert!(ev.iter().any(|e| e["event"] == "say" && e["error"].as_str().is_some()), "{got:?}");
    let (got, audio) = session(d.addr, 4, &[(0, "hello")]).await;
    assert!(audio < 4 && got.iter().any(|m| m.starts_with("error:") && m.contains("say")), "{got:?}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_token_must_be_in_the_vocabulary() {
    let mut settings = test_settings("tools", "unknown-token");
    settings.tools.insert("<clock>".into(), action(&["date"], 2000));
    let e = kokichi::daemon::run(settings, std::future::pending()).await.expect_err("an unknown token was bound");
    assert!(e.to_string().contains("<clock>") && e.to_string().contains("vocabulary"), "{e}");
}
