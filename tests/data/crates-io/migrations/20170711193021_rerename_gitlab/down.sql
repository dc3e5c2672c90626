UPDATE badges SET badge_type = replace(badge_type, 'gitlab', 'git-lab');
