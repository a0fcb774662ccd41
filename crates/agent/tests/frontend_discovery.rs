//! Frontend member discovery: a Chef frontend's `reconfigure` asks
//! `GET http://MEMBER:haproxy['etcd_port']/v2/members` (plain HTTP, `Accept: application/json`)
//! and takes each member's `name` and the host of its first `peerURLs` entry. This sends that
//! request to the health API over a real socket (127.0.42.0/24) and reads the answer the way
//! the frontend does.

use larder_agent::api::{self, ApiState};
use larder_agent::dcs::Member;
use larder_agent::state::{Sensors, Snapshot, Views};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn v2_members_answers_the_frontends_request() {
    let sensors = Arc::new(Sensors::default());
    *sensors.etcd_members.lock().unwrap() = vec![
        Member {
            id: 0x8e9e05c52164694d,
            name: "be1".into(),
            peer_urls: vec!["https://10.0.0.11:2380".into()],
            client_urls: vec!["https://10.0.0.11:2379".into()],
            learner: false,
        },
        Member {
            id: 0x91bc3c398fb3c146,
            name: "be2".into(),
            peer_urls: vec!["https://10.0.0.12:2380".into()],
            client_urls: vec!["https://10.0.0.12:2379".into()],
            learner: false,
        },
    ];
    let (_tx, rx) = tokio::sync::watch::channel(Snapshot::default());
    let state = ApiState {
        views: Views { ha: rx, sensors },
        required_followers: 0,
        name: "be1".into(),
        guid: "g".into(),
        metrics: Default::default(),
        // Nobody may read /status here; /v2/members must stay open regardless.
        status_allowed_cidrs: vec![],
    };
    let listener = tokio::net::TcpListener::bind("127.0.42.1:0")
        .await
        .expect("bind 127.0.42.1");
    let port = listener.local_addr().unwrap().port();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(api::serve(listener, state, stop.clone()));

    let mut s = tokio::net::TcpStream::connect(("127.0.42.1", port))
        .await
        .unwrap();
    let req = format!(
        "GET /v2/members HTTP/1.1\r\nAccept: application/json\r\nAccept-Encoding: gzip;q=1.0,deflate;q=0.6,identity;q=0.3\r\nUser-Agent: Chef Client/14.15.6 (ruby-2.6.6-p146; ohai-14.15.0; x86_64-linux; +https://chef.io)\r\nX-Chef-Version: 14.15.6\r\nHost: 127.0.42.1:{port}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    // The frontend's reading: name => host of the first peer URL.
    let mut found: Vec<(String, String)> = v["members"]
        .as_array()
        .expect("members array")
        .iter()
        .map(|m| {
            let url = m["peerURLs"][0].as_str().expect("peerURLs[0]");
            let host = url.split("://").nth(1).unwrap().split(':').next().unwrap();
            (m["name"].as_str().unwrap().to_string(), host.to_string())
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("be1".to_string(), "10.0.0.11".to_string()),
            ("be2".into(), "10.0.0.12".into())
        ]
    );
    stop.cancel();
}
