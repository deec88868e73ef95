#!/usr/bin/env bash
# Refreshes assets/referrers/ from Matomo's searchengine-and-social-list
# (CC0-1.0), as Debian packages it. tally embeds these files at build time;
# to use newer ones without a rebuild, point TALLY_REFERRER_LISTS at a
# directory holding SearchEngines.yml and Socials.yml.
#
# Usage: scripts/refresh-referrer-lists.sh [deb-url]
set -euo pipefail
cd "$(dirname "$0")/.."
URL=${1:-http://deb.debian.org/debian/pool/main/m/matomo-searchengine-and-social-list/matomo-searchengine-and-social-list_3.14.0-2_all.deb}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl --fail --silent --show-error --location --output "$work/list.deb" "$URL"
if command -v dpkg-deb >/dev/null; then
  dpkg-deb -x "$work/list.deb" "$work/root"
else
  (cd "$work" && ar x list.deb && mkdir root && tar -xf data.tar.* -C root)
fi
src="$work/root/usr/share/php/matomo/searchengine-and-social-list"
doc="$work/root/usr/share/doc/matomo-searchengine-and-social-list"
mkdir -p assets/referrers
cp "$src/SearchEngines.yml" "$src/Socials.yml" assets/referrers/
cp "$doc/copyright" assets/referrers/COPYRIGHT
{
  echo "SearchEngines.yml and Socials.yml: Matomo searchengine-and-social-list,"
  echo "https://github.com/matomo-org/searchengine-and-social-list"
  echo "Licence: CC0-1.0 (public domain dedication); see COPYRIGHT."
  echo "Fetched by scripts/refresh-referrer-lists.sh from:"
  echo "  $(basename "$URL")"
  echo "sha256:"
  (cd assets/referrers && sha256sum SearchEngines.yml Socials.yml | sed 's/^/  /')
} >assets/referrers/LICENSE
echo "assets/referrers: $(grep -c '^[^ #-]' assets/referrers/SearchEngines.yml) search engines, $(grep -c '^[^ #-]' assets/referrers/Socials.yml) socials"
