alter table versions
    drop column edition;
