package state

import (
	"context"
	"net/netip"
	"time"

	"github.com/redis/go-redis/v9"
)

// bucketIdle is how long an untouched bucket is kept: after a minute it
// has refilled completely, so forgetting it changes nothing.
const bucketIdle = time.Minute

// rateScript is the activation rate limit of one source: a token bucket
// every replica takes from, refilled at limit per minute with a burst of
// limit, read, refilled, taken and written in one atomic step.
//
//	KEYS[1]  the bucket, <prefix>rate:<source address>: a hash {t: tokens, ts: unix ms}
//	ARGV[1]  the limit per minute (and the burst)
//	ARGV[2]  now, unix ms, the asking replica's clock
//	ARGV[3]  the bucket's expiry when idle, ms
//
// It returns 1 when it took a token, 0 when the bucket was empty. A
// replica whose clock is behind the bucket's refills nothing (it never
// moves ts back), so skewed clocks can delay a refill, never add tokens;
// a lowered limit caps the bucket at once.
var rateScript = redis.NewScript(`
local limit = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if tokens == nil or ts == nil then
  tokens, ts = limit, now
elseif now > ts then
  tokens = tokens + (now - ts) * limit / 60000
  ts = now
end
if tokens > limit then tokens = limit end
local ok = 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return ok
`)

// AllowActivation takes one token for src from the bucket every replica
// shares, under a limit of perMinute: one EVALSHA round trip within
// state.redis.timeout. An error (ErrDegraded, or one wrapping ErrRedis)
// is no answer: the caller's local bucket decides.
func (s *Shared) AllowActivation(ctx context.Context, src netip.Addr, perMinute int, now time.Time) (bool, error) {
	if perMinute <= 0 {
		return false, nil
	}
	ctx, cancel, err := s.begin(ctx, OpRate)
	if err != nil {
		return false, err
	}
	defer cancel()
	t0 := time.Now()
	n, err := rateScript.Run(ctx, s.c, []string{s.rateKey(src)}, perMinute, now.UnixMilli(), bucketIdle.Milliseconds()).Int64()
	s.m.secRate.Observe(time.Since(t0).Seconds())
	if err != nil {
		return false, s.failed(OpRate, err)
	}
	return n == 1, nil
}

// rateKey is src's bucket.
func (s *Shared) rateKey(src netip.Addr) string { return s.prefix + "rate:" + src.Unmap().String() }
