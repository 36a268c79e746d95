-- Pruning (Store::prune) finds what no window needs any more by time.
CREATE INDEX counter_hits_at ON counter_hits (at);
CREATE INDEX counter_buckets_second ON counter_buckets (second);
CREATE INDEX throttles_until ON throttles (until);
