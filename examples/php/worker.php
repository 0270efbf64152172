<?php
// A trioschedule worker in plain PHP (no Composer): the minimal worker profile of docs/PROTOCOL.md.
//   TRIOSCHEDULE_CONNECT=127.0.0.1:7311 php examples/php/worker.php   (TRIOSCHEDULE_TOKEN if the dispatcher has one)
// Tasks run one at a time; slow_square waits on the event loop, so cancel and deadlines reach it while it runs.
declare(strict_types=1);

final class Later { public function __construct(public float $seconds, public mixed $value) {} }   // a value ready after a while
final class UnknownTask extends Exception {}

$TASKS = [
    'add' => fn($a, $b) => $a + $b,
    'checksum' => fn(string $text) => array_sum(unpack('C*', $text) ?: []) % 65536,
    'slow_square' => fn($x, $seconds = 0.5) => new Later((float) $seconds, $x * $x),
    'fail' => function (string $message = 'this task fails on purpose') { throw new RuntimeException($message); },
    'whoami' => fn() => ['pid' => getmypid(), 'name' => 'php@' . gethostname(), 'time' => microtime(true)],
];

function frame(array $message): string {   // 4-byte big-endian length that counts itself, then JSON
    $json = json_encode($message, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION);
    return pack('N', 4 + strlen($json)) . $json;
}

function error_outcome(array $spec, Throwable $e): array {
    return ['id' => $spec['id'], 'status' => 'error', 'attempt' => $spec['attempt'] ?? 1,
            'error' => ['type' => (new ReflectionClass($e))->getShortName(), 'message' => $e->getMessage(),
                        'traceback' => $e->getTraceAsString()]];
}

class Link {
    public $sock; public string $in = ''; public float $sent; public float $heard; public int $seq = 0;
    public function __construct(string $address, public float $heartbeat = 2.0, public float $timeout = 10.0) {
        $this->sock = @stream_socket_client("tcp://$address", $errno, $errstr, 5);
        if (!$this->sock) throw new RuntimeException("cannot connect to $address: $errstr");
        stream_set_blocking($this->sock, false);
        $this->sent = $this->heard = microtime(true);
    }
    public function send(array $message): void {   // a short write is finished, a failed one breaks the link
        $data = frame($message);
        while ($data !== '') {
            $w = [$this->sock]; $r = $e = null;
            if (@stream_select($r, $w, $e, 10) !== 1 || !($n = @fwrite($this->sock, $data))) throw new RuntimeException('send failed');
            $data = substr($data, $n);
        }
        $this->sent = microtime(true);
    }
    public function receive(float $wait): array {   // every whole message that arrived within $wait seconds
        $r = [$this->sock]; $w = $e = null;
        if (@stream_select($r, $w, $e, 0, (int) ($wait * 1e6)) === 1) {
            $chunk = fread($this->sock, 65536);
            if ($chunk === '' || $chunk === false) throw new RuntimeException('the dispatcher closed the connection');
            $this->in .= $chunk; $this->heard = microtime(true);
        }
        $out = [];
        while (strlen($this->in) >= 4) {
            $length = unpack('N', $this->in)[1];
            if ($length < 4 || $length > 10485760) throw new RuntimeException("bad frame length $length");
            if (strlen($this->in) < $length) break;
            $out[] = json_decode(substr($this->in, 4, $length - 4), true, 512, JSON_THROW_ON_ERROR);
            $this->in = substr($this->in, $length);
        }
        if (microtime(true) - $this->heard > $this->timeout) throw new RuntimeException('the dispatcher went silent');
        return $out;
    }
}

function serve(Link $link, array $tasks, bool &$stop): void {
    $token = getenv('TRIOSCHEDULE_TOKEN') ?: null;
    $hello = ['version' => 1, 'role' => 'worker', 'name' => 'php-worker@' . gethostname() . ':' . getmypid(),
              'host' => gethostname(), 'pid' => getmypid(), 'tasks' => array_keys($tasks), 'type' => 'hello'];
    if ($token !== null) $hello['nonce'] = bin2hex(random_bytes(16));
    $link->send($hello);
    do { $in = $link->receive(1.0); } while (!$in);
    $reply = array_shift($in);
    if ($reply['type'] === 'challenge') {   // prove the token, then check the dispatcher's proof
        if ($token === null) throw new RuntimeException('the dispatcher wants a token: set TRIOSCHEDULE_TOKEN');
        $text = "worker\n{$hello['nonce']}\n{$reply['nonce']}";
        $link->send(['proof' => hash_hmac('sha256', "trioschedule/1 peer\n$text", $token), 'type' => 'auth']);
        do { $in = $link->receive(1.0); } while (!$in);
        $reply = array_shift($in);
        if (($reply['type'] ?? '') === 'welcome' && !hash_equals(hash_hmac('sha256', "trioschedule/1 dispatcher\n$text", $token), $reply['proof'] ?? ''))
            throw new RuntimeException('the dispatcher could not prove it knows the token');
    }
    if ($reply['type'] !== 'welcome') throw new RuntimeException("refused: {$reply['code']}: {$reply['message']}");
    [$link->heartbeat, $link->timeout] = [(float) $reply['heartbeat'], (float) $reply['timeout']];
    fwrite(STDERR, "php worker: connected, session {$reply['session']}\n");
    $queue = []; $running = null;   // $running: [spec, started at, finishes at, value]
    while (true) {
        $report = ['started' => [], 'results' => []];
        foreach (array_merge($in, $link->receive(0.05)) as $msg) {
            switch ($msg['type']) {
                case 'run': array_push($queue, ...($msg['tasks'] ?? [])); break;
                case 'cancel':
                    $reason = $msg['reason'] ?? 'cancelled';
                    if ($running && $running[0]['id'] === $msg['id']) { $report['results'][] = ['id' => $msg['id'], 'status' => 'cancelled', 'attempt' => $running[0]['attempt'] ?? 1, 'reason' => $reason]; $running = null; }
                    foreach ($queue as $i => $spec) if ($spec['id'] === $msg['id']) { $report['results'][] = ['id' => $spec['id'], 'status' => 'cancelled', 'attempt' => $spec['attempt'] ?? 1, 'reason' => $reason]; unset($queue[$i]); }
                    $queue = array_values($queue); break;
                case 'reclaim':   // hand back what has not started
                    $ids = array_values(array_intersect($msg['ids'], array_column($queue, 'id')));
                    $queue = array_values(array_filter($queue, fn($s) => !in_array($s['id'], $ids, true)));
                    $link->send(['ids' => $ids, 'type' => 'release']); break;
                case 'message':   // a broadcast; {"ping": X} is answered, so the dispatcher sees every worker
                    fwrite(STDERR, 'php worker: message ' . json_encode($msg['data'] ?? null) . "\n");
                    if (isset($msg['data']['ping'])) $link->send(['data' => ['pong' => $msg['data']['ping'], 'pid' => getmypid(), 'worker' => $hello['name']], 'type' => 'message']);
                    break;
                case 'goodbye': throw new RuntimeException('the dispatcher said goodbye: ' . ($msg['reason'] ?? ''));
                case 'error': throw new RuntimeException("error {$msg['code']}: {$msg['message']}");
            }   // heartbeat: nothing to do (this worker keeps no results for a resume, so acks need no bookkeeping)
        }
        $in = [];
        if ($stop && $running === null) {   // graceful stop: hand back the queue, then say goodbye
            if ($report['results']) $link->send(['seq' => ++$link->seq, 'results' => $report['results'], 'type' => 'results']);
            $link->send(['ids' => array_column($queue, 'id'), 'stopping' => true, 'type' => 'release']);
            $link->send(['reason' => 'worker stopping', 'type' => 'goodbye']);
            return;
        }
        $now = microtime(true);
        if ($running === null && $queue) {
            $spec = array_shift($queue);
            $report['started'][] = $spec['id'];
            try {
                if (!isset($tasks[$spec['name']])) throw new UnknownTask("no task named {$spec['name']}");
                $value = $tasks[$spec['name']](...($spec['args'] ?? []), ...($spec['kwargs'] ?? []));
                $running = $value instanceof Later ? [$spec, $now, $now + $value->seconds, $value->value] : [$spec, $now, $now, $value];
            } catch (Throwable $e) {
                $report['results'][] = error_outcome($spec, $e);
            }
        }
        if ($running) {
            [$spec, $start, $end, $value] = $running;
            $deadline = isset($spec['timeout']) ? $start + $spec['timeout'] : INF;
            if ($now >= $deadline && $now < $end) {
                $report['results'][] = ['id' => $spec['id'], 'status' => 'timeout', 'attempt' => $spec['attempt'] ?? 1, 'reason' => "the task ran past its deadline ({$spec['timeout']} s)"];
                $running = null;
            } elseif ($now >= $end) {
                $ok = ['id' => $spec['id'], 'status' => 'ok', 'attempt' => $spec['attempt'] ?? 1, 'value' => $value];
                $report['results'][] = json_encode($ok) === false ? error_outcome($spec, new UnexpectedValueException('the result is not JSON')) : $ok;
                $running = null;
            }
        }
        if ($report['started'] || $report['results']) {
            $link->send(array_filter($report) + ['seq' => ++$link->seq, 'type' => 'results']);
        } elseif (microtime(true) - $link->sent >= $link->heartbeat) {
            $link->send(['type' => 'heartbeat']);
        }
    }
}

$address = getenv('TRIOSCHEDULE_CONNECT') ?: '127.0.0.1:7311';
$stop = false;
pcntl_async_signals(true);
foreach ([SIGTERM, SIGINT] as $signal) pcntl_signal($signal, function () use (&$stop) { $stop = true; });
for ($backoff = 0.1; !$stop; $backoff = min($backoff * 2, 5.0)) {   // reconnect with backoff until stopped
    try {
        serve(new Link($address), $TASKS, $stop);
        $backoff = 0.05;
    } catch (Throwable $e) {
        fwrite(STDERR, 'php worker: ' . $e->getMessage() . "\n");
        if (preg_match('/auth-failed|version-mismatch|bad-role/', $e->getMessage())) exit(1);
    }
    if (!$stop) usleep((int) ($backoff * 1e6));
}
