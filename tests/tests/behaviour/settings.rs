//! A stray `WARREN_*` variable or an unknown key in `warren.toml` stops each
//! binary at start-up, with an error that names the key.

use warren_tests::WAIT;
use warren_tests::worker::WorkerProcess;

/// Starts `binary` with `env`, waits for it to stop by itself, and returns
/// its exit status and all its output.
async fn stops(binary: &str, env: &[(&str, String)]) -> (std::process::ExitStatus, String) {
    let path = warren_tests::worker::binary(binary, binary).unwrap();
    let mut process = WorkerProcess::start(path, binary, env).await.unwrap();
    let output = process.all_output(WAIT).await.unwrap().join("\n");
    let status = process.wait_exit(WAIT).await.unwrap();
    (status, output)
}

#[tokio::test]
async fn a_stray_variable_stops_every_binary_naming_it() {
    for binary in ["email-worker", "image-worker", "gateway"] {
        let env = [("WARREN_CONSUMER__PREFETCHH", "4".to_owned())];
        let (status, output) = stops(binary, &env).await;
        assert!(!status.success(), "{binary} started: {output}");
        assert!(
            output.contains("prefetchh") || output.contains("consumer"),
            "{binary}: the error does not name the key:\n{output}"
        );
        let env = [("WARREN_BROKER__NAMESPACEE", "x".to_owned())];
        let (status, output) = stops(binary, &env).await;
        assert!(!status.success(), "{binary} started: {output}");
        assert!(
            output.contains("namespacee"),
            "{binary}: the error does not name the key:\n{output}"
        );
    }
}

#[tokio::test]
async fn an_unknown_key_in_the_file_stops_every_binary_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warren.toml");
    std::fs::write(
        &file,
        "[broker]\nnamespace = \"t-file\"\nurll = \"amqp://x\"\n",
    )
    .unwrap();
    for binary in ["email-worker", "image-worker", "gateway"] {
        let env = [("WARREN_CONFIG", file.display().to_string())];
        let (status, output) = stops(binary, &env).await;
        assert!(!status.success(), "{binary} started: {output}");
        assert!(
            output.contains("urll"),
            "{binary}: the error does not name the key:\n{output}"
        );
    }
}

#[tokio::test]
async fn the_gateway_refuses_a_console_conductor_url_that_is_not_an_http_url() {
    let env = [
        ("WARREN_HTTP__ADDR", "127.0.0.1:0".to_owned()),
        ("WARREN_CONSOLE__CONDUCTOR_URL", "conductor:9404".to_owned()),
    ];
    let (status, output) = stops("gateway", &env).await;
    assert!(!status.success(), "the gateway started: {output}");
    assert!(
        output.contains("console.conductor_url 'conductor:9404' is not an http(s) URL"),
        "the error does not name the setting:\n{output}"
    );
}
