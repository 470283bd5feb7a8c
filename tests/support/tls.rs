//! TLS pieces of the live tests: a throwaway certificate, uvicorn over HTTPS, nginx
//! terminating TLS, and the clients that talk to them.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::{Proc, python, repo, wait_for_port};

/// A self-signed certificate and its key for localhost: (cert, key).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl req failed: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// uvicorn serving tests/apps/echo_app.py over HTTPS.
pub fn uvicorn_https(port: u16, cert: &Path, key: &Path) -> Proc {
    let p = Proc::spawn(
        Command::new(python())
            .args(["-m", "uvicorn", "echo_app:app", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--no-access-log", "--ssl-certfile"])
            .arg(cert)
            .arg("--ssl-keyfile")
            .arg(key)
            .current_dir(repo().join("tests/apps"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(port);
    p
}

/// nginx in the foreground with `server` inside its `http` block; the master's Proc.
pub fn nginx(dir: &Path, server: &str, port: u16) -> Proc {
    std::fs::create_dir_all(dir.join("logs")).expect("nginx dir");
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  {server}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
    let p = Proc::spawn(
        Command::new("nginx")
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(port);
    p
}

/// tests/apps/https_client.py: waits for a line on stdin, then makes `requests` (JSON list of
/// [method, path]) on one keep-alive httpx connection to `base`; prints one line each.
pub fn https_client(base: &str, requests: &str) -> Proc {
    Proc::spawn(
        Command::new(python())
            .arg(repo().join("tests/apps/https_client.py"))
            .args([base, requests])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    )
}

/// `program args...` held until a line arrives on its stdin, then exec'd under the same pid:
/// the agent can select it by `pid:` before it makes its first syscall (`comm:` would also
/// match other tests' clients running at the same time).
pub fn held(program: &str, args: &[&str]) -> Proc {
    Proc::spawn(
        Command::new("sh")
            .args(["-c", "read _ && exec \"$@\"", "sh", program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// Release a `held` process and wait for it: its stdout, after checking it succeeded.
pub fn release(mut p: Proc) -> String {
    use std::io::Read;
    p.send_line("go");
    let (mut out, mut err) = (String::new(), String::new());
    p.child.stdout.take().expect("piped stdout").read_to_string(&mut out).expect("read stdout");
    p.child.stderr.take().expect("piped stderr").read_to_string(&mut err).expect("read stderr");
    let status = p.child.wait().expect("wait for the held process");
    assert!(status.success(), "held process failed ({status}): {err}");
    out
}
