// Drives acpd with qwen's official client, `DaemonClient` of `@qwen-code/sdk` (pinned in
// package.json, installed unmodified by tests/scripts/install-sdk-client.sh), and prints one JSON
// line per step: {"step", "ok": true, "value"} or {"step", "ok": false, "error": {name, status,
// body, message}}, then {"step": "done"}. tests/tests/official_client.rs runs it and asserts on
// every step; this script only drives and reports, it judges nothing.
//
//   node drive.mjs <sdk install dir> <daemon base URL> demo|qwen
//
// `demo`: every operation of the stable contract against acpd serving the demo agent (the
// workspace holds hello.txt, src/lib.rs and blob.bin, made by the test). `qwen`: model and
// approval mode switches against the real Qwen Code child.
//
// Every wait has a deadline; the whole run is bounded too (the test also kills it at its own).

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [sdkDir, baseUrl, scenario] = process.argv.slice(2);
if (!sdkDir || !baseUrl || !['demo', 'qwen'].includes(scenario)) {
  console.error('usage: node drive.mjs <sdk install dir> <daemon base URL> demo|qwen');
  process.exit(2);
}
const RUN_DEADLINE_MS = 240_000;
const EVENT_WAIT_MS = 90_000;
setTimeout(() => {
  emit({ step: 'deadline', ok: false, error: { message: `run exceeded ${RUN_DEADLINE_MS} ms` } });
  process.exit(3);
}, RUN_DEADLINE_MS).unref();

// The package's own entry point for `@qwen-code/sdk/daemon` (its exports map, ESM condition).
const pkgDir = join(sdkDir, 'node_modules', '@qwen-code', 'sdk');
const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
const {
  DaemonClient,
  DaemonSessionClient,
  DAEMON_KNOWN_EVENT_TYPE_VALUES,
  asKnownDaemonEvent,
  reduceDaemonSessionEvents,
} = await import(
  pathToFileURL(join(pkgDir, pkg.exports['./daemon'].import)).href
);

/**
 * The client's own validation of events: for each type seen, how many, whether the client knows
 * the type, and how many of those it rejects as malformed (`asKnownDaemonEvent` answers undefined
 * for a known type whose data does not have the shape the client expects).
 */
function validate(events) {
  const byType = {};
  for (const e of events) {
    const t = (byType[e.type] ??= { count: 0, known: DAEMON_KNOWN_EVENT_TYPE_VALUES.includes(e.type), malformed: 0 });
    t.count++;
    if (t.known && asKnownDaemonEvent(e) === undefined) {
      t.malformed++;
      t.example ??= e;
    }
  }
  return byType;
}

/** What the client's own session view makes of the events (`reduceDaemonSessionEvents`). */
function view(events) {
  const v = reduceDaemonSessionEvents(events);
  return {
    sessionId: v.sessionId ?? null,
    alive: v.alive,
    currentModelId: v.currentModelId ?? null,
    approvalMode: v.approvalMode ?? null,
    displayName: v.displayName ?? null,
    pendingPermissions: Object.keys(v.pendingPermissions),
    unrecognizedKnownEventCount: v.unrecognizedKnownEventCount,
    lastUnrecognizedKnownEvent: v.lastUnrecognizedKnownEvent ?? null,
    unmatchedPermissionResolutionCount: v.unmatchedPermissionResolutionCount,
    terminalEvent: v.terminalEvent?.type ?? null,
    lastModelSwitchFailure: v.lastModelSwitchFailure ?? null,
    lastTurnComplete: v.lastTurnComplete ?? null,
  };
}

function emit(line) {
  process.stdout.write(JSON.stringify(line) + '\n');
}

function describe(e) {
  return {
    name: e?.name,
    status: e?.status,
    body: e?.body,
    message: String(e?.message ?? e),
  };
}

/** Runs one step, prints its line; returns its value (undefined when it threw). */
async function step(name, f) {
  try {
    const value = await f();
    emit({ step: name, ok: true, value: value === undefined ? null : value });
    return value;
  } catch (e) {
    emit({ step: name, ok: false, error: describe(e) });
    return undefined;
  }
}

/** The session's events, read through the client's own SSE subscription. */
class Events {
  constructor(client, sessionId, clientId) {
    this.seen = [];
    this.waiters = [];
    this.abort = new AbortController();
    this.ended = (async () => {
      try {
        // From the session's first event (Last-Event-ID: 0): nothing is missed while connecting.
        const opts = { clientId, lastEventId: 0, signal: this.abort.signal };
        for await (const ev of client.subscribeEvents(sessionId, opts)) {
          this.seen.push(ev);
          for (const w of [...this.waiters]) w.check();
        }
      } catch (e) {
        if (!this.abort.signal.aborted) this.error = describe(e);
      }
      for (const w of [...this.waiters]) w.fail(new Error('event stream ended'));
    })();
  }

  /** The first event from index `from` on satisfying `pred`, within `ms`. */
  wait(pred, from = 0, ms = EVENT_WAIT_MS) {
    return new Promise((resolve, reject) => {
      const w = {
        check: () => {
          const i = this.seen.findIndex((ev, j) => j >= from && pred(ev));
          if (i >= 0) {
            done();
            resolve({ index: i, event: this.seen[i] });
          }
        },
        fail: (e) => {
          done();
          reject(e);
        },
      };
      const timer = setTimeout(
        () => w.fail(new Error(`no matching event within ${ms} ms; saw ${this.seen.map((e) => e.type)}`)),
        ms,
      );
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((x) => x !== w);
      };
      this.waiters.push(w);
      w.check();
    });
  }

  turnEnd(promptId, from = 0) {
    return this.wait(
      (e) => (e.type === 'turn_complete' || e.type === 'turn_error') && e.data?.promptId === promptId,
      from,
    );
  }

  close() {
    this.abort.abort();
    return this.ended;
  }
}

const text = (t) => ({ prompt: [{ type: 'text', text: t }] });

async function demo(c) {
  await step('health', () => c.health());
  await step('capabilities', () => c.capabilities());
  const s = await step('createOrAttachSession', () => c.createOrAttachSession({ sessionScope: 'thread' }));
  if (!s) return;
  const sid = s.sessionId;
  const cid = s.clientId;
  const ev = new Events(c, sid, cid);

  // The core flow: a blocking prompt (the client waits on its own SSE subscription).
  await step('prompt', () => c.prompt(sid, text('hello from the official client <b>&</b>'), undefined, cid));
  await step('promptEvents', async () => {
    const { index } = await ev.wait((e) => e.type === 'turn_complete');
    return ev.seen.slice(0, index + 1).map((e) => ({ id: e.id, type: e.type, data: e.data }));
  });
  await step('sessionStatus', () => c.sessionStatus(sid, cid));
  await step('sessionContext', () => c.sessionContext(sid, cid));

  // Model switches: accepted, refused by the agent, unknown.
  let from = ev.seen.length;
  await step('setSessionModel', () => c.setSessionModel(sid, 'demo-smart', cid));
  await step('modelSwitchedEvent', async () => (await ev.wait((e) => e.type === 'model_switched', from)).event);
  from = ev.seen.length;
  await step('setSessionModelRefused', () => c.setSessionModel(sid, 'demo-broken', cid));
  await step('modelSwitchFailedEvent', async () => (await ev.wait((e) => e.type === 'model_switch_failed', from)).event);
  await step('setSessionModelUnknown', () => c.setSessionModel(sid, 'gpt-nope', cid));

  // Approval mode.
  from = ev.seen.length;
  await step('setSessionApprovalMode', () => c.setSessionApprovalMode(sid, 'plan', { clientId: cid }));
  await step('approvalModeChangedEvent', async () => (await ev.wait((e) => e.type === 'approval_mode_changed', from)).event);
  await step('setSessionApprovalModeInvalid', () => c.setSessionApprovalMode(sid, 'bogus', { clientId: cid }));
  await step('sessionContextAfterSwitches', () => c.sessionContext(sid, cid));
  // Back to default so the writes below ask permission as in any mode.
  await step('setSessionApprovalModeDefault', () => c.setSessionApprovalMode(sid, 'default', { clientId: cid }));

  // Metadata round trip.
  from = ev.seen.length;
  await step('updateSessionMetadata', () =>
    c.updateSessionMetadata(
      sid,
      { displayName: 'Driven by the official client', pr: { number: 42, url: 'https://github.com/acme/app/pull/42', state: 'open' } },
      cid,
    ),
  );
  await step('metadataEvent', async () => (await ev.wait((e) => e.type === 'session_metadata_updated', from)).event);
  await step('sessionStatusAfterMetadata', () => c.sessionStatus(sid, cid));

  // Permission, answered on the session's route.
  from = ev.seen.length;
  const p1 = await step('promptNonBlockingWrite', () =>
    c.promptNonBlocking(sid, text('write sdk-note.txt written through the session vote'), undefined, cid),
  );
  const req1 = await step('permissionRequestEvent', async () => (await ev.wait((e) => e.type === 'permission_request', from)).event);
  if (req1) {
    await step('respondToSessionPermission', () =>
      c.respondToSessionPermission(sid, req1.data.requestId, { outcome: { outcome: 'selected', optionId: 'allow' } }, cid),
    );
  }
  if (p1) await step('writeTurnEnd', async () => (await ev.turnEnd(p1.promptId, from)).event);

  // Permission, answered on the legacy route (POST /permission/:requestId); a second vote on the
  // same request is answered 404, which the client reports as false.
  from = ev.seen.length;
  const p2 = await step('promptNonBlockingLegacyWrite', () =>
    c.promptNonBlocking(sid, text('write legacy-note.txt written through the legacy vote'), undefined, cid),
  );
  const req2 = await step('legacyPermissionRequestEvent', async () => (await ev.wait((e) => e.type === 'permission_request', from)).event);
  if (req2) {
    await step('sessionStatusWaiting', () => c.sessionStatus(sid, cid));
    await step('respondToPermission', () =>
      c.respondToPermission(req2.data.requestId, { outcome: { outcome: 'selected', optionId: 'allow' } }, cid),
    );
    if (p2) await step('legacyWriteTurnEnd', async () => (await ev.turnEnd(p2.promptId, from)).event);
    await step('respondToPermissionAgain', () =>
      c.respondToPermission(req2.data.requestId, { outcome: { outcome: 'selected', optionId: 'allow' } }, cid),
    );
  }

  // Cancel a running turn.
  from = ev.seen.length;
  const p3 = await step('promptNonBlockingSlow', () => c.promptNonBlocking(sid, text('slow 100 100'), undefined, cid));
  if (p3) {
    await step('slowFirstChunk', async () =>
      (await ev.wait((e) => e.type === 'session_update' && e.data?.update?.sessionUpdate === 'agent_message_chunk', from)).event,
    );
    // The queue behind it: listed, then one removed.
    const q = await step('promptNonBlockingQueued', () =>
      c.promptNonBlocking(sid, text('queued then removed'), undefined, cid),
    );
    await step('getPendingPrompts', () => c.getPendingPrompts(sid, { clientId: cid }));
    if (q) {
      const at = ev.seen.length;
      await step('removePendingPrompt', () => c.removePendingPrompt(sid, q.promptId, { clientId: cid }));
      await step('queuedRemovedEvent', async () =>
        (await ev.wait((e) => e.type === 'pending_prompt_completed' && e.data?.promptId === q.promptId, at)).event,
      );
      await step('removePendingPromptAgain', () => c.removePendingPrompt(sid, q.promptId, { clientId: cid }));
    }
    await step('cancel', () => c.cancel(sid, cid));
    await step('cancelledTurnEnd', async () => (await ev.turnEnd(p3.promptId, from)).event);
  }

  // Transcript: everything at once, then forward and backward pages following the cursors.
  const all = await step('transcriptAll', () => c.getSessionTranscriptPage(sid, { limit: 500, clientId: cid }));
  await step('transcriptEventsValidated', () => validate(all?.events ?? []));
  await step('transcriptForwardPages', async () => {
    const pages = [];
    let opts = { limit: 3, clientId: cid };
    for (let i = 0; i < 200; i++) {
      const p = await c.getSessionTranscriptPage(sid, opts);
      pages.push(p);
      if (!p.hasMore) break;
      opts = { cursor: p.nextCursor, limit: opts.limit, clientId: cid };
    }
    return pages;
  });
  await step('transcriptBackwardPages', async () => {
    const pages = [];
    let opts = { direction: 'backward', limit: 4, clientId: cid };
    for (let i = 0; i < 200; i++) {
      const p = await c.getSessionTranscriptPage(sid, opts);
      pages.push(p);
      if (!p.hasMore) break;
      opts = { cursor: p.nextCursor, limit: opts.limit, clientId: cid };
    }
    return pages;
  });
  await step('transcriptBadCursor', () => c.getSessionTranscriptPage(sid, { cursor: 'garbage', clientId: cid }));

  // Export in every format (and the default).
  await step('exportDefault', () => c.exportSession(sid, { clientId: cid }));
  for (const format of ['html', 'md', 'json', 'jsonl']) {
    await step(`export_${format}`, () => c.exportSession(sid, { format, clientId: cid }));
  }

  // Workspace files.
  await step('readWorkspaceFile', () => c.readWorkspaceFile('hello.txt', {}, cid));
  await step('readWorkspaceFileLines', () => c.readWorkspaceFile('hello.txt', { line: 2, limit: 1 }, cid));
  await step('readWorkspaceFileWritten', () => c.readWorkspaceFile('sdk-note.txt', {}, cid));
  await step('readWorkspaceFileTraversal', () => c.readWorkspaceFile('../outside.txt', {}, cid));
  await step('readWorkspaceFileBinary', () => c.readWorkspaceFile('blob.bin', {}, cid));
  await step('readWorkspaceFileBytes', () => c.readWorkspaceFileBytes('blob.bin', { offset: 1, maxBytes: 4 }, cid));
  await step('fileStat', () => c.fileStat('src/lib.rs'));
  await step('fileStatTraversal', () => c.fileStat('../'));
  await step('dirList', () => c.dirList('.'));
  await step('dirListSrc', () => c.dirList('src'));
  await step('glob', () => c.glob('**/*.rs'));
  await step('globTraversal', () => c.glob('../*'));
  await step('workspaceTools', () => c.workspaceTools());

  // The rest of the core: heartbeat, the workspace's sessions, load.
  await step('heartbeat', () => c.heartbeat(sid, cid));
  await step('listWorkspaceSessions', () => c.listWorkspaceSessions(s.workspaceCwd));
  await step('loadSession', () => c.loadSession(sid, {}, cid));

  // Resume the live session (attach without replay), then close it.
  await step('resumeSession', () => c.resumeSession(sid, {}, cid));
  await step('closeSession', () => c.closeSession(sid, cid));
  await step('sessionClosedEvent', async () => (await ev.wait((e) => e.type === 'session_closed')).event);
  await step('eventsValidated', () => validate(ev.seen));
  await step('sessionView', () => view(ev.seen));
  await step('eventStreamError', async () => {
    await ev.close();
    return ev.error ?? null;
  });
}

/** A session created in an approval mode (the client's `approvalMode`), and one refused. */
async function createInMode(c) {
  const s = await step('createInPlanMode', () => c.createOrAttachSession({ sessionScope: 'thread', approvalMode: 'plan' }));
  if (s) {
    await step('createInPlanModeContext', () => c.sessionContext(s.sessionId, s.clientId));
    await step('createInPlanModeClose', () => c.closeSession(s.sessionId, s.clientId));
  }
  const cwd = s?.workspaceCwd;
  const count = async () => (await c.listWorkspaceSessions(cwd)).length;
  const before = await step('sessionsBeforeRefusedCreate', count);
  await step('createInBogusMode', () => c.createOrAttachSession({ sessionScope: 'thread', approvalMode: 'bogus' }));
  await step('sessionsAfterRefusedCreate', count);
  return before;
}

const SESSION_CLIENT_PROMPT = 'slow 2 500 through the session client';

/** The client's session object: its own subscription carries the prompt's end. */
async function sessionClient(c) {
  let x;
  await step('sessionClientCreate', async () => {
    x = await DaemonSessionClient.createOrAttach(c, { sessionScope: 'thread' });
    return { sessionId: x.sessionId, clientId: x.clientId ?? null, attached: x.attached };
  });
  if (!x) return;
  const seen = [];
  const abort = new AbortController();
  const reading = (async () => {
    try {
      for await (const e of x.events({ signal: abort.signal })) seen.push(e);
    } catch (e) {
      if (!abort.signal.aborted) throw e;
    }
  })();
  // A turn of about a second (two ticks of 500 ms). The client registers its wait for the
  // turn's end only once it has handled the 202; a turn that ends first (the demo agent's plain
  // answer takes a few ms) is dropped by the client and its prompt() never resolves, when the
  // client's process is held off a core at that moment (reproduced 1 in 12 runs next to two
  // busy loops; docs/API.md, "The official client and turns that end at once").
  await step('sessionClientPrompt', () => x.prompt(text(SESSION_CLIENT_PROMPT)));
  await step('sessionClientSetModel', () => x.setModel('demo-smart'));
  await step('sessionClientContext', () => x.context());
  await step('sessionClientTranscript', () => x.getTranscriptPage({ limit: 500 }));
  await step('sessionClientClose', () => x.close());
  // The daemon publishes session_closed, then ends the stream: the reader ends by itself once it
  // has read everything. Aborting at once would race the last events; abort only at the deadline.
  const deadline = setTimeout(() => abort.abort(), EVENT_WAIT_MS);
  await step('sessionClientEvents', async () => {
    await reading;
    clearTimeout(deadline);
    return { types: seen.map((e) => e.type), validated: validate(seen), view: view(seen) };
  });
}

async function qwen(c) {
  const s = await step('createOrAttachSession', () => c.createOrAttachSession({ sessionScope: 'thread' }));
  if (!s) return;
  const sid = s.sessionId;
  const cid = s.clientId;
  const ev = new Events(c, sid, cid);
  const cx = await step('sessionContext', () => c.sessionContext(sid, cid));
  // The model to switch to: one the agent lists other than the current one, else the current one.
  const models = cx?.state?.models;
  const listed = (models?.availableModels ?? []).map((m) => m.modelId);
  const target = listed.find((m) => m !== models?.currentModelId) ?? models?.currentModelId ?? listed[0];
  emit({ step: 'modelTarget', ok: true, value: target ?? null });
  let from = ev.seen.length;
  if (target) {
    await step('setSessionModel', () => c.setSessionModel(sid, target, cid));
    await step('modelSwitchEvent', async () =>
      (await ev.wait((e) => e.type === 'model_switched' || e.type === 'model_switch_failed', from)).event,
    );
  }
  await step('setSessionModelUnknown', () => c.setSessionModel(sid, 'no-such-model', cid));
  // Every mode, ending in yolo: the write below then runs without asking permission.
  for (const mode of ['auto-edit', 'plan', 'auto', 'default', 'yolo']) {
    from = ev.seen.length;
    await step(`setSessionApprovalMode_${mode}`, () => c.setSessionApprovalMode(sid, mode, { clientId: cid }));
    await step(`approvalModeChangedEvent_${mode}`, async () =>
      (await ev.wait((e) => e.type === 'approval_mode_changed' && e.data?.next === mode, from)).event,
    );
    await step(`sessionContext_${mode}`, () => c.sessionContext(sid, cid));
  }
  await step('setSessionApprovalModeInvalid', () => c.setSessionApprovalMode(sid, 'bogus', { clientId: cid }));
  // A turn on the new model in yolo mode: the mock LLM answers with a file write (the test set it
  // up), which the agent does without a permission request.
  // A permission request instead means the mode did not reach the agent: the turn is then
  // cancelled, so the run ends at once (and the test fails on the events).
  from = ev.seen.length;
  const w = await step('promptInYolo', () =>
    c.promptNonBlocking(sid, text('Create the file official-client.txt'), undefined, cid),
  );
  if (w) {
    await step('promptInYoloEnd', async () => {
      const { event } = await ev.wait(
        (e) =>
          e.type === 'permission_request' ||
          ((e.type === 'turn_complete' || e.type === 'turn_error') && e.data?.promptId === w.promptId),
        from,
      );
      if (event.type === 'permission_request') {
        await c.cancel(sid, cid);
        await ev.turnEnd(w.promptId, from);
      }
      return event;
    });
  }
  await step('promptInYoloEvents', () => ev.seen.slice(from).map((e) => e.type));
  await step('eventsValidated', () => validate(ev.seen));
  await step('sessionView', () => view(ev.seen));
  await step('closeSession', () => c.closeSession(sid, cid));
  await ev.close();
}

// A real agent's start (spawn, initialize, session/new) can take a minute on a busy machine.
const client = new DaemonClient({ baseUrl, fetchTimeoutMs: scenario === 'qwen' ? 90_000 : 60_000 });
try {
  if (scenario === 'demo') {
    await demo(client);
    await createInMode(client);
    await sessionClient(client);
  } else {
    await qwen(client);
  }
} finally {
  client.dispose();
}
emit({ step: 'done', ok: true, value: null });
process.exit(0);
