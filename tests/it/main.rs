//! The integration tests: one binary, one module per area of the contract
//! (`docs/api.md`), all sharing the harness in `support`.
//!
//! Every test starts its own server on port 0 against its own database, so
//! tests run in parallel and never see each other's users.

mod support;

// Contract section 2 (users, sessions, search, tokens, login rate limits)
// and the account rows of section 8 (`/user/signup`, `/user/login`, `/user/logout`).
mod accounts;
// Contract section 9's sessions and passwords: listing and ending sessions, changing the password,
// both across two processes, and failed password checks counted per user with failed logins.
mod sessions;
// Contract sections 1 and 7: healthz, readyz, 404/405, the `/ws` 426 on the
// HTTP port, and the transport limits (Content-Type, body size, JSON).
mod ops;
// Contract section 7's `/metrics`: the whole exposition through a strict parser, and counters that move.
mod metrics;
// Contract section 3: creating groups and direct chats, listing, renaming, members.
mod chats;
// Contract section 4: sending, client_id retries, history cursors, edits, deletes, read markers.
mod messages;
// Contract section 5: the per-chat event log, its paging, and its order under concurrent writers.
mod events;
// Contract section 9's replies: `reply_to_seq` on REST and WebSocket sends, checked by the send.
mod replies;
// Contract section 9's reactions: the routes, their rules and limits, their events, and races between processes.
mod reactions;
// Contract section 9's search: the word rule in any script, membership now, deleted and edited
// messages, paging, the limits on every parameter, and the migration's back-fill.
mod search;
// Contract section 8's chat routes: `/chat/message`, `/chat/user`, `/chat/messages/{id}`.
mod legacy;
// Contract section 6 and the `ws` row of section 8: WebSocket auth, frames, fan-out across processes, lag and logout.
mod realtime;
// Per-address and per-user limits: WebSockets per user and per address, handshakes in
// flight, frames per connection, the message budget shared by REST and WebSocket, sign-ups.
mod limits;
// Database faults: connections killed by pg_terminate_backend, a restart, a frozen database
// (and, with SOAK=1, one frozen for 20 seconds).
mod faults;
// The migration runner as a library: order, bookkeeping, rollback, checksums, file names, races.
mod migrate;
// The compiled binary: exit codes, one-line errors, `migrate` output, `serve` refusing or answering.
mod binary;
// The log on stderr: logfmt, `LOG` levels, request ids, causes of 500s and 503s, and watched threads.
mod logs;
// The README's curl walkthrough, run verbatim against a fresh server.
mod readme;
// Issue 12: real-time delivery under races between processes, reconnects, membership changes, logouts and a SIGKILL.
mod delivery;
// The HTTP port under hostile clients: the hardening issue's probes as raw bytes, each refused or
// answered while the workers live on; vendor/tiny_http/PATCHES.md names the test behind each patch.
mod hostile;
// The same probes through a real nginx configured by docs/deploy/nginx.conf: refused there or
// answered safely, honest traffic and WebSockets passing, X-Forwarded-For reaching the limits.
mod proxy;
// `make soak`'s sends through database faults and hostile clients: nothing acknowledged is lost.
mod soak;
// The fuzz targets' findings and seeds (fuzz/), replayed through `messaging::fuzzing`.
mod fuzz;
// Contract section 7's `GET /`: the web client's page, its security headers, nothing loaded from elsewhere.
mod webclient;
// Issue 16's terminal client, `messaging client ...`: login with the password on stdin, a 0600 token file,
// chats, send, search, and `tail` printing live messages once each.
mod client;
