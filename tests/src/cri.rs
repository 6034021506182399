//! A CRI client: what the kubelet speaks to containerd's CRI plugin
//! (`runtime.v1` over containerd's gRPC socket), so the shim suite drives
//! pods the way Kubernetes does. The messages and clients are k8s-cri's
//! (generated from the CRI protos, on tonic); this module connects them
//! over the unix socket and makes each call the tests need a blocking one.

use std::path::Path;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, ImageStatusRequest,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
    VersionRequest, VersionResponse,
};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Status;

/// A connection to one containerd's CRI plugin.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connect to the CRI plugin on containerd's gRPC `socket`.
    pub fn connect(socket: &Path) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a tokio runtime: {e}"))?;
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is required by tonic and unused: the connector
                // below always dials the socket.
                Endpoint::from_static("http://[::]")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await
            })
            .map_err(|e| format!("connecting to the CRI socket {}: {e}", socket.display()))?;
        Ok(Self {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// `Version`: the runtime's name and CRI version.
    pub fn version(&mut self) -> Result<VersionResponse, Status> {
        let req = VersionRequest {
            version: "v1".into(),
        };
        let call = self.runtime.version(req);
        self.rt.block_on(call).map(|r| r.into_inner())
    }

    /// Whether the CRI plugin's image store has `image` (it learns of an
    /// imported image from containerd's events, so shortly after).
    pub fn has_image(&mut self, image: &str) -> Result<bool, Status> {
        let req = ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        let call = self.images.image_status(req);
        Ok(self.rt.block_on(call)?.into_inner().image.is_some())
    }

    /// `RunPodSandbox` with the runtime handler `handler` (what a
    /// RuntimeClass names); the pod's id.
    pub fn run_pod(&mut self, config: &PodSandboxConfig, handler: &str) -> Result<String, Status> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let call = self.runtime.run_pod_sandbox(req);
        Ok(self.rt.block_on(call)?.into_inner().pod_sandbox_id)
    }

    /// The pod's state (`PodSandboxState` as its number).
    pub fn pod_state(&mut self, pod: &str) -> Result<i32, Status> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        };
        let call = self.runtime.pod_sandbox_status(req);
        let status = self.rt.block_on(call)?.into_inner().status;
        Ok(status.map(|s| s.state).unwrap_or(-1))
    }

    /// `CreateContainer` of `image` running `command` in `pod`; its id.
    pub fn create_container(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String, Status> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: command.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            sandbox_config: Some(pod_config.clone()),
        };
        let call = self.runtime.create_container(req);
        Ok(self.rt.block_on(call)?.into_inner().container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&mut self, id: &str) -> Result<(), Status> {
        let req = StartContainerRequest {
            container_id: id.into(),
        };
        let call = self.runtime.start_container(req);
        self.rt.block_on(call).map(|_| ())
    }

    /// `RemoveContainer`.
    pub fn remove_container(&mut self, id: &str) -> Result<(), Status> {
        let req = RemoveContainerRequest {
            container_id: id.into(),
        };
        let call = self.runtime.remove_container(req);
        self.rt.block_on(call).map(|_| ())
    }

    /// `StopPodSandbox`.
    pub fn stop_pod(&mut self, pod: &str) -> Result<(), Status> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        let call = self.runtime.stop_pod_sandbox(req);
        self.rt.block_on(call).map(|_| ())
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod(&mut self, pod: &str) -> Result<(), Status> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        let call = self.runtime.remove_pod_sandbox(req);
        self.rt.block_on(call).map(|_| ())
    }
}

/// A pod named `name` in the host's network namespace: the CRI plugin
/// then needs no CNI plugin (the pod's own network, through a TAP in its
/// netns, is step 4 of docs/kubernetes.md).
pub fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
