"""A real lorad for the dashboard's Python tests, started as tests/daemon_harness.cc
starts it: a temp data dir whose models root holds the tiny SDXL checkpoint
lorad-mkmodel makes, lorad on free loopback ports (--listen and --http
127.0.0.1:0, read back from lorad.port / lorad.http-port), the build's
lorad-train as its worker, and loractl for uploads and submits."""
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zlib

TOKEN = "web-test-token"


def tiny_config(max_steps, save_every_n_steps=0, extra=""):
    """The short tiny-SDXL training config of Daemon::TinyConfig."""
    text = (
        'pretrained_model_name_or_path = "tiny_sdxl.safetensors"\n'
        'device = "cpu"\noutput_name = "tiny"\ncaption_extension = ".txt"\nresolution = "64"\n'
        'network_module = "networks.lora"\nnetwork_dim = 4\nnetwork_alpha = 4\n'
        "network_train_unet_only = true\nlearning_rate = 1e-3\noptimizer_type = \"AdamW\"\n"
        f"train_batch_size = 1\nseed = 7\nmax_train_steps = {max_steps}\n")
    if save_every_n_steps:
        text += f"save_every_n_steps = {save_every_n_steps}\n"
    return text + extra


def write_png(path, width, height, rgb_at):
    """An 8-bit RGB PNG written with zlib alone (no imaging package needed)."""
    rows = b"".join(b"\x00" + b"".join(bytes(rgb_at(x, y)) for x in range(width)) for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def make_dataset(folder, count, prompts=None):
    """`count` 64x64 shapes with captions in folder/1_shape, and a prompts file."""
    subject = os.path.join(folder, "1_shape")
    os.makedirs(subject, exist_ok=True)
    for i in range(count):
        cx, cy, r = 32, 32, 12 + 3 * i
        write_png(os.path.join(subject, f"img{i}.png"), 64, 64,
                  lambda x, y: (250, 200 - 40 * i, 30) if (x - cx) ** 2 + (y - cy) ** 2 < r * r
                  else (40 * i % 255, 90, 200))
        with open(os.path.join(subject, f"img{i}.txt"), "w") as f:
            f.write(f"a shape, circle {i}, plain background")
    if prompts:
        with open(os.path.join(folder, "prompts.txt"), "w") as f:
            f.write("".join(p + "\n" for p in prompts))


class Daemon:
    def __init__(self, build_dir, extra_flags=()):
        self.build_dir = os.path.abspath(build_dir)
        self.root = tempfile.mkdtemp(prefix="lorad-web-test-")
        self.data = os.path.join(self.root, "data")
        os.makedirs(os.path.join(self.data, "models"))
        subprocess.run([self.binary("core/models/lorad-mkmodel"), "--arch", "sdxl", "--size", "tiny", "--seed", "3",
                        os.path.join(self.data, "models", "tiny_sdxl.safetensors")], check=True,
                       stdout=subprocess.DEVNULL)
        self.log = open(os.path.join(self.root, "lorad.stderr"), "w")
        env = dict(os.environ)
        env.pop("LORAD_TOKEN", None)
        self.process = subprocess.Popen(
            [self.binary("server/lorad"), "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
             "--data-dir", self.data, "--slots", "1", "--grace-s", "5", "--token", TOKEN,
             "--worker", self.binary("core/train/lorad-train"), "--curate", self.binary("core/data/lorad-curate"),
             *extra_flags], stderr=self.log, env=env)
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(self.data, "lorad.port")):
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"lorad did not start; see {self.log.name}:\n{self.stderr()}")
            time.sleep(0.05)
        self.port = int(open(os.path.join(self.data, "lorad.port")).read())
        self.http_port = int(open(os.path.join(self.data, "lorad.http-port")).read())
        self.url = f"http://127.0.0.1:{self.http_port}"

    def binary(self, relative):
        return os.path.join(self.build_dir, relative)

    def stderr(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()[-4000:]

    def loractl(self, *args):
        result = subprocess.run([self.binary("client/loractl"), "--server", f"127.0.0.1:{self.port}",
                                 "--token", TOKEN, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"loractl {' '.join(args)}: {result.returncode}\n{result.stdout}{result.stderr}")
        return result.stdout.strip()

    def request(self, path, token=TOKEN, method="GET", headers=None):
        """(status, headers, body bytes) of one request to the dashboard."""
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def api(self, path):
        status, _, body = self.request(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
        return json.loads(body)

    def wait_job(self, job_id, states, timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.api(f"/api/jobs/{job_id}")["job"]
            if job["state"].replace("JOB_STATE_", "").lower() in states:
                return job
            time.sleep(0.2)
        raise RuntimeError(f"job {job_id} not in {states} after {timeout} s; lorad said:\n{self.stderr()}")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
