//! The README's walkthrough, as a test: create, subscribe, prompt, see events in order.

use acpd_tests::*;
use serde_json::json;

#[tokio::test]
async fn prompt_streams_echo_chunks_and_turn_complete_in_order() -> anyhow::Result<()> {
    let d = Daemon::start().await?;
    let s = d.create_session_with(json!({})).await?;
    let mut sse = d.events(&s, None, None).await?;
    let r = d.prompt(&s, "hi there").await?;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let prompt_id = r.body["promptId"].as_str().unwrap().to_string();
    assert_eq!(r.body["lastEventId"], 0);
    let frames = sse.until_turn_end(&prompt_id).await?;
    let ids: Vec<u64> = frames.iter().filter_map(|f| f.id).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "ids are 1..n without gaps"
    );
    let echo = frames
        .iter()
        .position(|f| f.data["data"]["update"]["_meta"]["source"] == "bridge-echo")
        .unwrap();
    let first_chunk = frames
        .iter()
        .position(|f| f.data["data"]["update"]["sessionUpdate"] == "agent_message_chunk")
        .unwrap();
    assert!(echo < first_chunk);
    assert_eq!(frames.last().unwrap().event, "turn_complete");
    assert_eq!(
        frames.last().unwrap().data["data"]["stopReason"],
        "end_turn"
    );
    assert_eq!(
        agent_text(&frames),
        "Hello from the demo agent. You said: hi there"
    );
    assert!(d.stdout().is_empty());
    Ok(())
}
