drop table badges;
