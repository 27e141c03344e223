#! /usr/bin/perl
# debhelper sequence file for dh_ivle_maint (dh --with ivle-maint, or the
# build dependency dh-sequence-ivle-maint).
#
# After dh_installinit: the position does not decide the order of the
# snippets (debhelper keeps dh_installinit's and dh_installsystemd's
# service snippets apart and puts them after every other snippet in the
# postinst, before them in the prerm and postrm), so ivle-maint's postinst
# lines always run before dh_installinit's start of ivle-usrmgt-server.
# Running after it lets dh_ivle_maint check the options dh_installinit was
# given and warn when it would restart ivle-usrmgt-server a second time.

use warnings;
use strict;
use Debian::Debhelper::Dh_Lib;

insert_after("dh_installinit", "dh_ivle_maint");

1;
