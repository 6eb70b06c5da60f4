//! Writing requests of one upload session that arrive at once: exactly one
//! writes, the others get 416 `RANGE_INVALID` with the session's `Range`,
//! `Location` and `Docker-Upload-UUID`, and the blob is the winner's bytes.
//! On the embedded backend both requests go to one server; in scale-out to
//! two replicas over the same PostgreSQL database and S3 bucket.

use std::io;
use std::time::Duration;

use futures::channel::mpsc;
use reqwest::{Body, Response, StatusCode};

use crate::harness::*;

/// How long a test waits for an answer that must come (a hang guard).
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

type Sender = mpsc::UnboundedSender<Result<Vec<u8>, io::Error>>;

/// A request whose body is still open: more bytes go through `body`, and
/// dropping it ends the body.
struct Held {
    body: Sender,
    answer: tokio::task::JoinHandle<Response>,
}

/// Starts `method url` (with `range` as its `Content-Range`) with `first` as
/// the start of a body held open.
fn hold(client: &reqwest::Client, method: reqwest::Method, url: String, range: Option<String>, first: &[u8]) -> Held {
    let (body, chunks) = mpsc::unbounded();
    body.unbounded_send(Ok(first.to_vec())).expect("the body is open");
    let mut request = client
        .request(method, url)
        .header("content-type", "application/octet-stream");
    if let Some(range) = range {
        request = request.header("content-range", range);
    }
    let request = request.body(Body::wrap_stream(chunks));
    Held {
        body,
        answer: tokio::spawn(async move { request.send().await.expect("request") }),
    }
}

impl Held {
    /// Sends `rest` and ends the body; returns the answer.
    async fn finish(self, rest: &[u8]) -> Response {
        self.body.unbounded_send(Ok(rest.to_vec())).expect("the body is open");
        drop(self.body);
        tokio::time::timeout(ANSWER_WITHIN, self.answer)
            .await
            .expect("an answer once the body ended")
            .expect("request task")
    }
}

/// Waits for the first of two held requests to answer; returns which one
/// (0 or 1), its answer, and the other one, still held.
async fn first_answer(a: Held, b: Held) -> (usize, Response, Held) {
    let (
        Held {
            body: body_a,
            answer: a,
        },
        Held {
            body: body_b,
            answer: b,
        },
    ) = (a, b);
    let raced = futures::future::select(a, b);
    match tokio::time::timeout(ANSWER_WITHIN, raced)
        .await
        .expect("one of two requests writing one session at once is answered before its body ends")
    {
        futures::future::Either::Left((answer, other)) => (
            0,
            answer.expect("request task"),
            Held {
                body: body_b,
                answer: other,
            },
        ),
        futures::future::Either::Right((answer, other)) => (
            1,
            answer.expect("request task"),
            Held {
                body: body_a,
                answer: other,
            },
        ),
    }
}

/// Asserts the answer to a request refused because another one writes the
/// session: 416 `RANGE_INVALID` with where the session stands.
async fn assert_busy(resp: Response, session: &str, offset: u64) {
    let range = header(&resp, "range").to_string();
    let location = header(&resp, "location").to_string();
    let uuid = header(&resp, "docker-upload-uuid").to_string();
    let body = assert_error(resp, 416, "RANGE_INVALID").await;
    assert_eq!(range, format!("0-{}", offset.saturating_sub(1)), "{body}");
    assert!(session.ends_with(&location), "Location {location} of {session}");
    assert!(location.ends_with(&uuid), "Docker-Upload-UUID {uuid} in {location}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("another request is writing"), "{message}");
}

/// The two servers the requests go to: the app and a replica in scale-out,
/// the app twice on the embedded backend.
struct Servers {
    replica: Option<Server>,
}

impl Servers {
    fn start(app: &TestApp) -> Servers {
        Servers {
            replica: scaleout().then(|| app.replica()),
        }
    }

    fn bases(&self, app: &TestApp) -> [String; 2] {
        [
            app.base.clone(),
            self.replica.as_ref().map_or(app.base.clone(), Server::base),
        ]
    }
}

/// The path of an upload session URL (`/v2/…/blobs/uploads/<id>`).
fn session_path(url: &str) -> String {
    let start = url.find("/v2/").expect("a /v2/ URL");
    url[start..].to_string()
}

/// A chunk's `Content-Range` from offset 0, when `declared`.
fn range_of(bytes: &[u8], declared: bool) -> Option<String> {
    declared.then(|| format!("0-{}", bytes.len() - 1))
}

async fn patches_of_one_session_at_once(declared_ranges: bool) {
    let app = TestApp::start();
    let servers = Servers::start(&app);
    let bases = servers.bases(&app);
    let session = session_path(&app.start_upload("race/patch").await);
    let bytes = [random_bytes(48 * 1024), random_bytes(40 * 1024)];
    let patch = |i: usize| {
        hold(
            &app.client,
            reqwest::Method::PATCH,
            format!("{}{session}", bases[i]),
            range_of(&bytes[i], declared_ranges),
            &bytes[i][..1024],
        )
    };
    // Neither body ends before an answer comes, so the first answer is the
    // loser's, given while the winner still writes.
    let (loser, refused, winner_request) = first_answer(patch(0), patch(1)).await;
    assert_busy(refused, &session, 0).await;
    let winner = 1 - loser;
    let accepted = winner_request.finish(&bytes[winner][1024..]).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&accepted, "range"), format!("0-{}", bytes[winner].len() - 1));

    // The winner's bytes and nothing else: its digest completes the session
    // (through the server that refused the chunk).
    let digest = sha256(&bytes[winner]);
    let resp = app
        .client
        .put(format!("{}{session}?digest={digest}", bases[loser]))
        .send()
        .await
        .expect("PUT");
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    for base in &bases {
        let resp = app
            .client
            .get(format!("{base}/v2/race/patch/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.bytes().await.unwrap(), bytes[winner]);
    }
}

#[tokio::test]
async fn concurrent_patches_of_one_session_let_exactly_one_through() {
    patches_of_one_session_at_once(false).await;
}

#[tokio::test]
async fn concurrent_patches_with_ranges_let_exactly_one_through() {
    patches_of_one_session_at_once(true).await;
}

#[tokio::test]
async fn a_final_put_while_a_chunk_streams_is_refused() {
    let app = TestApp::start();
    let servers = Servers::start(&app);
    let [first, second] = servers.bases(&app);
    let session = session_path(&app.start_upload("race/put").await);
    let chunk = random_bytes(32 * 1024);
    let last = random_bytes(1000);
    let patch = hold(
        &app.client,
        reqwest::Method::PATCH,
        format!("{first}{session}"),
        None,
        &chunk[..512],
    );
    // A PUT with the last chunk, through the other server, while the PATCH's
    // body is open: whichever is refused answers first.
    let whole = [chunk.clone(), last.clone()].concat();
    let put = hold(
        &app.client,
        reqwest::Method::PUT,
        format!("{second}{session}?digest={}", sha256(&whole)),
        None,
        &last,
    );
    let (refused_one, refused, other) = first_answer(patch, put).await;
    assert_busy(refused, &session, 0).await;
    if refused_one == 0 {
        // The PUT got the session first: a blob of its bytes alone, which
        // does not match the digest of both; the session is dropped.
        let resp = other.finish(&[]).await;
        assert_error(resp, 400, "DIGEST_INVALID").await;
        return;
    }
    let accepted = other.finish(&chunk[512..]).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let resp = app
        .client
        .put(format!("{second}{session}?digest={}", sha256(&whole)))
        .header("content-range", format!("{}-{}", chunk.len(), whole.len() - 1))
        .body(last.clone())
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = app.get(&format!("/v2/race/put/blobs/{}", sha256(&whole))).await;
    assert_eq!(resp.bytes().await.unwrap(), whole);
}

/// A replica that dies while it writes a session holds it only until its
/// lease runs out (30 s, here on the test clock); then another replica
/// continues the session. The embedded backend has one process, whose
/// claims end with it.
#[tokio::test]
async fn a_dead_replicas_claim_runs_out() {
    if !scaleout() {
        eprintln!("skipped: replicas need {BACKEND_ENV}=scaleout");
        return;
    }
    let mut app = TestApp::start_with_clock("");
    let mut replica = Some(app.replica());
    let bases = [app.base.clone(), replica.as_ref().unwrap().base()];
    let session = session_path(&app.start_upload("race/dead").await);
    let doomed = random_bytes(8 * 1024);
    let patch = |i: usize| {
        hold(
            &app.client,
            reqwest::Method::PATCH,
            format!("{}{session}", bases[i]),
            None,
            &doomed[..100],
        )
    };
    let (loser, refused, winner_request) = first_answer(patch(0), patch(1)).await;
    assert_busy(refused, &session, 0).await;
    // The winner dies with its chunk half sent.
    if loser == 0 {
        replica = None;
    } else {
        app.kill9();
    }
    drop(winner_request);
    let survivor = bases[loser].clone();
    let bytes = random_bytes(5000);
    let send = |body: Vec<u8>| {
        app.client
            .patch(format!("{survivor}{session}"))
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };
    assert_busy(send(bytes.clone()).await.expect("PATCH"), &session, 0).await;
    app.advance_clock(31_000);
    let resp = send(bytes.clone()).await.expect("PATCH");
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let digest = sha256(&bytes);
    let resp = app
        .client
        .put(format!("{survivor}{session}?digest={digest}"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = app
        .client
        .get(format!("{survivor}/v2/race/dead/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap(), bytes);
    drop(replica);
}
