import { randomInt } from 'node:crypto';

// Docker-style generated container names (adjective_surname), so `strata ps` reads familiarly.
const LEFT = ['admiring', 'bold', 'brave', 'calm', 'clever', 'eager', 'elastic', 'focused', 'gallant', 'happy', 'jolly', 'keen', 'lucid', 'modest', 'nifty', 'quirky', 'serene', 'sharp', 'stoic', 'vibrant', 'wizardly', 'zealous'];
const RIGHT = ['babbage', 'curie', 'dijkstra', 'euclid', 'feynman', 'goldberg', 'hopper', 'hypatia', 'kalam', 'knuth', 'lamport', 'liskov', 'lovelace', 'noether', 'pike', 'ritchie', 'shannon', 'thompson', 'torvalds', 'turing', 'wozniak'];

export function generateName(): string {
  return `${LEFT[randomInt(LEFT.length)]}_${RIGHT[randomInt(RIGHT.length)]}`;
}
