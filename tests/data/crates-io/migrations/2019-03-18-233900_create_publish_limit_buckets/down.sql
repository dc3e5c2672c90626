DROP TABLE publish_limit_buckets;
