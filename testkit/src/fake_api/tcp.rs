//! Over TCP: the fake served on a loopback port, for a client in another process.

use super::*;

impl FakeApi {
    /// A kubeconfig whose one context talks to this fake served at `addr` (see
    /// [`FakeApi::serve_http`]), anonymously.
    pub fn kubeconfig(addr: std::net::SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: fake\n  user: {{}}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n"
        )
    }

    /// Serves this fake over plain HTTP on a loopback port, for a client in another
    /// process (a kubeconfig naming `http://{addr}`); each connection is served until it
    /// closes or the runtime ends. Requests are anonymous: [`FakeApi::partition`] cannot
    /// cut them off.
    pub async fn serve_http(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = self.shared.clone();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let shared = shared.clone();
            async move {
                let (parts, body) = request.into_parts();
                let response = match body.collect().await {
                    Ok(body) => {
                        let body = kube::client::Body::from(body.to_bytes());
                        shared.handle(None, Request::from_parts(parts, body)).await
                    }
                    Err(error) => bad_request(format!("reading the body: {error}")).response(),
                };
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            while let Ok((tcp, _)) = listener.accept().await {
                let connection = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service.clone())
                    .into_owned();
                tokio::spawn(connection);
            }
        });
        addr
    }
}
