//! The JSON bodies of every rerank API, sent over HTTP to a real server on a tiny model: the
//! first byte picks the route, the rest is the body. Every answer must be 200 or a documented
//! error with the envelope; a handler that panics drops the connection, which fails here too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xbench::testing::documented_rerank_answer;

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    let path = match route % 3 {
        0 => "/rerank",
        1 => "/v1/rerank",
        _ => "/v2/rerank",
    };
    let (server, client) = xbench_fuzz::server();
    let response = client
        .post(format!("{}{path}", server.url()))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .expect("the server answers (a panicking handler drops the connection)");
    let status = response.status().as_u16();
    let answer = response.bytes().expect("the whole answer");
    if let Err(e) = documented_rerank_answer(status, &answer) {
        panic!("{path}: {e}");
    }
});
