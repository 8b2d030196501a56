#!/usr/bin/env python3
"""AIOpsLab bridge of the task executor: runs one AIOpsLab problem and speaks the runner protocol.

Started by the `aiopslab` runner with the task in its environment (TASK_ID, PROBLEM_ID, MAX_STEPS,
TIMEOUT_SECONDS, ATTEMPT, WORKER_ID, AIOPSLAB_CLUSTER, TASK_PARAMETERS_FILE and, when small, TASK_PARAMETERS).
It writes JSON lines on stdout:
{"event": "log", ...}, one {"event": "step", ...} per agent action, and once {"event": "result", ...}.

The agent comes from parameters.agent_config:
  {"agent": "NAME", ...}                 an agent by name: one the worker's operator listed in AIOPSLAB_AGENTS
                                         (`name=module:Class,...`), or one of AIOpsLab's own clients (gpt, qwen,
                                         deepseek, vllm, openrouter, generic); constructed with the other keys
                                         when it accepts them. A task names an agent, never code: a name that is
                                         not listed (a `module:Class` among them) is refused.
  {"model": "gpt-4o", "temperature": 0.7, "max_tokens": 1024}
                                         the built-in OpenAI-compatible chat agent, using OPENAI_API_KEY and
                                         OPENAI_BASE_URL (default https://api.openai.com/v1) from the environment.
Each run drives the kind cluster named by AIOPSLAB_CLUSTER, and only it:
  - a kubeconfig of the run's own, whose current context is kind-$AIOPSLAB_CLUSTER (`kind get kubeconfig`, or a
    copy of the user's with that context), is the run's KUBECONFIG: AIOpsLab's shell commands (kubectl, helm,
    its deployments and fault injectors) and its Python client (which loads kind-$AIOPSLAB_CLUSTER) agree;
  - AIOpsLab's Shell sends a kind host's commands to the container `kind-control-plane`; in this process it sends
    them to `$AIOPSLAB_CLUSTER-control-plane`, the node container of this run's cluster;
  - the context must answer before the problem starts; otherwise the run fails at once (exit 4).
With `--check`, it only checks that it could run here (AIOpsLab importable: else exit 3; the cluster there and
answering: else exit 4) and exits 0; workers run that check before claiming.
On SIGTERM (cancel, timeout, a stopping worker) the run stops: the injected fault is recovered and the
application cleaned up, as AIOpsLab's own exit path does, then the bridge exits (143). A run killed before it
could clean up leaves its cluster marked, and the next run on that cluster cleans up first.
"""

import asyncio
import atexit
import importlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
import urllib.error
import urllib.request
from pathlib import Path

INSTALL_HINT = (
    "AIOpsLab is not importable by {python}. Install it into that interpreter, e.g. "
    "`git clone https://github.com/microsoft/AIOpsLab && cd AIOpsLab && pip install -e .` "
    "(or set AIOPSLAB_PYTHON to the python of the environment that has it, such as its poetry venv)."
)


class Stopped(Exception):
    """SIGTERM: the run is being stopped from outside."""


class Unusable(Exception):
    """The worker cannot run problems here (its cluster is missing or does not answer)."""


def on_sigterm(signum, frame):
    # Once: a second signal must not interrupt the clean-up (SIGKILL ends it after the grace period).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stopped()


def prepare_cluster(cluster):
    """Makes this run's KUBECONFIG one whose current context is kind-<cluster>, and checks that it answers."""
    fd, path = tempfile.mkstemp(prefix=f"kubeconfig-{cluster}-", suffix=".yaml")
    os.close(fd)
    atexit.register(lambda: os.path.exists(path) and os.unlink(path))
    context = f"kind-{cluster}"
    if shutil.which("kind"):
        out = subprocess.run(["kind", "get", "kubeconfig", "--name", cluster],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise Unusable(f"kind cluster {cluster!r} is not available ({out.stderr.strip()}): create it with "
                           f"`kind create cluster --name {cluster}`, or give this worker another one")
        Path(path).write_text(out.stdout)
    else:
        source = (os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")).split(os.pathsep)[0]
        if not os.path.isfile(source):
            raise Unusable(f"neither `kind` nor a kubeconfig ({source}) is there to reach cluster {cluster!r}")
        shutil.copyfile(source, path)
        out = subprocess.run(["kubectl", "config", "use-context", context, "--kubeconfig", path],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise Unusable(f"the kubeconfig {source} has no context {context}: {out.stderr.strip()}")
    os.environ["KUBECONFIG"] = path
    try:
        out = subprocess.run(["kubectl", "--context", context, "cluster-info"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unusable(f"the kube context {context} does not answer: {e}") from e
    if out.returncode != 0:
        raise Unusable(f"the kube context {context} does not answer: {(out.stderr or out.stdout).strip()}")
    log("info", f"this run drives kind cluster {cluster} (context {context}, container {cluster}-control-plane)",
        cluster=cluster, kubeconfig=path)


def target_cluster_shell(cluster):
    """AIOpsLab's Shell sends a kind host's commands to `kind-control-plane`; the node container of a kind
    cluster named X is `X-control-plane`. In this process only, it sends them to this run's cluster."""
    from aiopslab.paths import config
    from aiopslab.service.shell import Shell
    original = Shell.exec
    container = f"{cluster}-control-plane"

    def exec_on_this_cluster(command, input_data=None, cwd=None, timeout=30):
        if config.get("k8s_host", "localhost") == "kind":
            return Shell.docker_exec(container, command, timeout=timeout)
        return original(command, input_data, cwd, timeout)

    Shell.exec = staticmethod(exec_on_this_cluster)


def marker(cluster):
    """Where a run on `cluster` notes the problem it set up until it has cleaned up after it."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "task-executor" / "clusters" / f"{cluster or 'default'}.json"


def clean_up(prob, orch_module=None):
    """Recovers the injected fault and cleans the application up; says what was done."""
    done = []
    try:
        prob.recover_fault()
        done.append("fault recovered")
    except Exception as e:  # noqa: BLE001 - report, go on with the clean-up
        done.append(f"fault recovery failed: {e}")
    cleanup_fault = getattr(orch_module, "exit_cleanup_fault", None)
    if cleanup_fault is not None:
        atexit.unregister(cleanup_fault)
    try:
        prob.app.cleanup()
        done.append("application cleaned up")
    except Exception as e:  # noqa: BLE001
        done.append(f"application clean-up failed: {e}")
    return done


def clean_leftovers(cluster):
    """A run killed before it cleaned up left its cluster marked: clean up after it before starting."""
    m = marker(cluster)
    if not m.exists():
        return
    left = json.loads(m.read_text())
    pid = left.get("problem_id")
    log("warning", f"the last run on cluster {cluster} ({pid}) was killed before it cleaned up: cleaning up first",
        left_by=left)
    from aiopslab.orchestrator.problems.registry import ProblemRegistry
    done = clean_up(ProblemRegistry().get_problem_instance(pid))
    log("info", f"clean-up of the last run on cluster {cluster}: {', '.join(done)}", problem_id=pid)
    m.unlink()


# Where the run is, so that a failure says whose it is (the runner protocol's `failure` event): before the
# agent acts, the infrastructure's (cluster, deployment, fault injection); once the agent loop runs, the agent's.
STAGE = {"name": "setup", "kind": "infrastructure"}


def enter(name, kind):
    STAGE.update(name=name, kind=kind)


def emit(obj):
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def log(level, message, **context):
    emit({"event": "log", "level": level, "message": message, "context": context or None})


class ChatAgent:
    """An OpenAI-compatible chat-completions agent (any server speaking that API)."""

    def __init__(self, model, temperature=0.7, max_tokens=1024):
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.key = os.environ.get("OPENAI_API_KEY")
        self.base = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
        self.messages = []
        self.in_tokens = 0
        self.out_tokens = 0

    def init_context(self, problem_desc, instructions, apis):
        api_text = "\n".join(f"- {k}: {v}" for k, v in (apis or {}).items()) if isinstance(apis, dict) else str(apis)
        self.messages = [{"role": "system", "content": f"{problem_desc}\n\n{instructions}\n\nAPIs:\n{api_text}"}]

    def _complete(self):
        body = json.dumps({"model": self.model, "temperature": self.temperature,
                           "max_tokens": self.max_tokens, "messages": self.messages}).encode()
        req = urllib.request.Request(f"{self.base}/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self.key}"})
        with urllib.request.urlopen(req, timeout=300) as resp:
            data = json.load(resp)
        usage = data.get("usage") or {}
        self.in_tokens += usage.get("prompt_tokens", 0)
        self.out_tokens += usage.get("completion_tokens", 0)
        return data["choices"][0]["message"]["content"]

    async def get_action(self, state):
        self.messages.append({"role": "user", "content": state})
        action = await asyncio.to_thread(self._complete)
        self.messages.append({"role": "assistant", "content": action})
        return action


class StepReporter:
    """Wraps the agent: one step event per action."""

    def __init__(self, inner):
        self.inner = inner
        self.steps = 0

    def init_context(self, *args, **kwargs):
        if hasattr(self.inner, "init_context"):
            return self.inner.init_context(*args, **kwargs)
        return None

    async def get_action(self, state):
        if self.steps == 0:
            enter("agent loop", "agent")
        action = self.inner.get_action(state)
        if inspect.isawaitable(action):
            action = await action
        self.steps += 1
        emit({"event": "step", "step": self.steps, "action": str(action)[:4000]})
        return action

    def __getattr__(self, name):
        return getattr(self.inner, name)


# AIOpsLab's own clients (its clients/ directory), by the names its registry gives them.
AIOPSLAB_CLIENTS = {
    "gpt": "clients.gpt:GPTAgent",
    "qwen": "clients.qwen:QwenAgent",
    "deepseek": "clients.deepseek:DeepSeekAgent",
    "vllm": "clients.vllm:vLLMAgent",
    "openrouter": "clients.openrouter:OpenRouterAgent",
    "generic": "clients.generic_openai:GenericOpenAIAgent",
}


def registered_agents():
    """The agents a task may name: AIOpsLab's clients, and what the operator listed in AIOPSLAB_AGENTS."""
    agents = dict(AIOPSLAB_CLIENTS)
    for item in filter(None, (os.environ.get("AIOPSLAB_AGENTS") or "").split(",")):
        name, _, target = item.strip().partition("=")
        agents[name] = target
    return agents


def taken_keys(cls, config):
    """The keys of `config` that `cls`'s constructor takes, and (sorted) the ones it does not."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return config, []
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return config, []
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in config.items() if k in names}, sorted(k for k in config if k not in names)


# Keys of agent_config the bridge itself reads: which agent, and the name AIOpsLab records the run under.
BRIDGE_KEYS = ("agent", "name")


def build_agent(agent_config):
    """The agent a task's agent_config names, and the keys of it the agent does not take (logged as a
    warning and kept in the result: AIOpsLab's GPTAgent, say, takes no `model`)."""
    config = {k: v for k, v in (agent_config or {}).items() if k not in BRIDGE_KEYS}
    name = (agent_config or {}).get("agent")
    if name is not None:
        agents = registered_agents()
        if not isinstance(name, str) or name not in agents:
            raise SystemExit(
                f"agent {name!r} is not registered on this worker: a task names an agent, never code. "
                f"Known: {', '.join(sorted(agents))}. The worker's operator registers more with "
                "AIOPSLAB_AGENTS=name=module:Class,...")
        module_name, _, class_name = agents[name].partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
    else:
        if not os.environ.get("OPENAI_API_KEY"):
            raise SystemExit("the built-in chat agent needs OPENAI_API_KEY in the runner's environment "
                             "(or name a registered agent in agent_config.agent)")
        if "model" not in config:
            raise SystemExit("agent_config.model is required for the built-in chat agent")
        name, cls = "chat", ChatAgent
    taken, ignored = taken_keys(cls, config)
    if ignored:
        log("warning", f"agent {name} ({cls.__module__}.{cls.__name__}) does not take "
            f"{', '.join(ignored)}: ignored, it runs with its own settings", ignored=ignored)
    return cls(**taken), ignored


# The agent's trajectory kept in the result, at most (the whole session stays in AIOpsLab's results directory).
HISTORY_MAX_BYTES = 160_000


def provenance(agent_config, built, ignored):
    """What the run's result depends on: AIOpsLab's version (and commit, when it is installed from a git
    checkout), the agent's name, class and model."""
    import aiopslab
    try:
        from importlib.metadata import version
        aiopslab_version = version("aiopslab")
    except Exception:  # noqa: BLE001 - not installed as a distribution (a checkout on the path)
        aiopslab_version = getattr(aiopslab, "__version__", None)
    root = Path(aiopslab.__file__).resolve().parent.parent
    commit = None
    if (root / ".git").exists():
        try:
            out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=10, check=False)
            commit = out.stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            pass
    model = getattr(built, "model", None) or getattr(getattr(built, "llm", None), "model", None)
    if not isinstance(model, str) and "model" not in ignored:
        model = (agent_config or {}).get("model")
    cls = type(built)
    return {"event": "provenance", "aiopslab_version": aiopslab_version, "aiopslab_commit": commit,
            "agent": (agent_config or {}).get("agent") or "chat", "agent_class": f"{cls.__module__}.{cls.__name__}",
            "model": model if isinstance(model, str) else None}


def capped_history(history):
    """The session's history, its first and last entries kept when it is larger than HISTORY_MAX_BYTES."""
    history = list(history or [])
    if len(json.dumps(history, default=str)) <= HISTORY_MAX_BYTES:
        return history
    head, tail = history[:5], history[5:]
    while tail and len(json.dumps(head + tail, default=str)) > HISTORY_MAX_BYTES:
        tail = tail[max(1, len(tail) // 10):]
    cut = len(history) - len(head) - len(tail)
    return head + [{"truncated": True, "entries_cut": cut}] + tail


def session_link(orch):
    """AIOpsLab's session id and the JSON file it wrote the whole session to (on this worker's disk)."""
    sess = getattr(orch, "session", None)
    session_id = getattr(sess, "session_id", None)
    if session_id is None:
        return {}
    link = {"session_id": str(session_id)}
    try:
        from aiopslab.paths import RESULTS_DIR
        results_dir = Path(getattr(sess, "results_dir", None) or RESULTS_DIR)
        path = results_dir / f"{session_id}_{getattr(sess, 'start_time', '')}.json"
        if path.is_file():
            link["session_file"] = str(path)
    except Exception:  # noqa: BLE001 - the link is a help, not a condition of the result
        pass
    return link


def success_of(results):
    if "success" in results:
        return bool(results["success"])
    return results.get("Detection Accuracy") == "Correct"


def task_parameters():
    """The task's parameters: from TASK_PARAMETERS_FILE (always given), else TASK_PARAMETERS (small ones)."""
    path = os.environ.get("TASK_PARAMETERS_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return json.loads(os.environ.get("TASK_PARAMETERS") or "{}")


def main():
    problem_id = os.environ.get("PROBLEM_ID", "")
    max_steps = int(os.environ.get("MAX_STEPS", "30"))
    params = task_parameters()
    cluster = os.environ.get("AIOPSLAB_CLUSTER", "")
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        from aiopslab.orchestrator import Orchestrator
    except ImportError as e:
        message = INSTALL_HINT.format(python=sys.executable) + f" ({e})"
        log("critical", message)
        print(message, file=sys.stderr)
        return 3
    if cluster:
        try:
            prepare_cluster(cluster)
            if "--check" in sys.argv[1:]:
                return 0
            target_cluster_shell(cluster)
            clean_leftovers(cluster)
        except Unusable as e:
            log("critical", str(e), cluster=cluster)
            print(e, file=sys.stderr)
            return 4
    if "--check" in sys.argv[1:]:
        return 0

    enter("agent configuration", "agent")
    built, ignored = build_agent(params.get("agent_config"))
    emit(provenance(params.get("agent_config"), built, ignored))
    agent = StepReporter(built)
    log("info", f"AIOpsLab run of {problem_id} on kind cluster {cluster or '(default)'}",
        cluster=cluster, max_steps=max_steps)
    orch = Orchestrator()
    orch.register_agent(agent, name=(params.get("agent_config") or {}).get("name", "task-executor-agent"))
    mark = marker(cluster)
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text(json.dumps({"problem_id": problem_id, "task_id": os.environ.get("TASK_ID")}))
    enter("problem initialisation (deployment, fault injection)", "infrastructure")
    try:
        problem_desc, instructions, apis = orch.init_problem(problem_id)
        agent.init_context(problem_desc, instructions, apis)
        log("info", "problem initialised: application deployed, fault injected")
        session = asyncio.run(orch.start_problem(max_steps=max_steps))
    except BaseException as e:
        # Stopped (SIGTERM) or failed: recover the fault and clean up, as AIOpsLab's own exit path does.
        prob = getattr(getattr(orch, "session", None), "problem", None)
        done = clean_up(prob, sys.modules.get(type(orch).__module__)) if prob is not None else ["nothing set up yet"]
        mark.unlink(missing_ok=True)
        if isinstance(e, Stopped):
            log("warning", f"stopped: {', '.join(done)}", cluster=cluster)
            return 143
        log("error", f"the run failed; {', '.join(done)}", cluster=cluster)
        raise
    mark.unlink(missing_ok=True)
    results = (session or {}).get("results") or {}
    success = success_of(results)
    metrics = dict(results)
    inner = agent.inner
    if isinstance(inner, ChatAgent):
        metrics.setdefault("in_tokens", inner.in_tokens)
        metrics.setdefault("out_tokens", inner.out_tokens)
    if session and "framework_overhead" in session:
        metrics["framework_overhead"] = session["framework_overhead"]
    summary = ", ".join(f"{k}: {v}" for k, v in results.items() if k in (
        "Detection Accuracy", "Localization Accuracy", "TTD", "TTL", "TTA", "TTM", "success"))
    emit({"event": "result", "success": success, "output": f"{problem_id}: {summary or 'no results'}",
          "metrics": metrics, **session_link(orch), **({"ignored_agent_config": ignored} if ignored else {}),
          "history": capped_history((session or {}).get("history"))})
    return 0


if __name__ == "__main__":
    def failed(why):
        emit({"event": "failure", "kind": STAGE["kind"], "message": f"{STAGE['name']}: {why}", "stage": STAGE["name"]})

    try:
        sys.exit(main())
    except SystemExit as e:
        if isinstance(e.code, str):  # a refusal with its reason (an agent not registered, a key missing)
            failed(e.code)
        raise
    except Exception as e:  # noqa: BLE001 - report any failure of the run, then fail
        failed(e)
        log("critical", f"the AIOpsLab run failed: {e}")
        traceback.print_exc()
        sys.exit(1)
