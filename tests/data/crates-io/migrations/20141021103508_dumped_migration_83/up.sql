CREATE INDEX index_crates_keywords_keyword_id
                           ON crates_keywords (keyword_id);