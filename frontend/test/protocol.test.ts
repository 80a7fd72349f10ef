import { describe, expect, test } from 'vitest';
import { FrameError, parseServerFrame } from '../src/sync';
import { example, exampleNames, exampleText } from './support/examples';

describe('parseServerFrame', () => {
  const serverExamples = exampleNames().filter((n) => n.startsWith('server-'));

  test('the examples include every server frame type', () => {
    const types = new Set(serverExamples.map((n) => example(n).type));
    expect([...types].sort()).toEqual(['error', 'poke', 'pong', 'pulled', 'pushed', 'welcome']);
  });

  test.each(serverExamples)('%s parses to the frame as sent', (name) => {
    const frame = parseServerFrame(exampleText(name));
    expect(frame).toEqual(example(name));
  });

  test('a frame type this client does not know is ignored, not an error', () => {
    expect(parseServerFrame('{"type":"presence","who":["a"]}')).toBeUndefined();
  });

  test.each([
    ['not JSON', '{"type":'],
    ['not an object', '[1,2]'],
    ['no type', '{"id":"x"}'],
    ['welcome without machineID', '{"type":"welcome","spaceID":"s","region":"r","protocol":1}'],
    ['poke without baseCookie', '{"type":"poke","body":{"cookie":1,"lastMutationIDChanges":{},"patch":[]}}'],
    ['poke with a bad cookie', '{"type":"poke","baseCookie":true,"body":{"cookie":1,"lastMutationIDChanges":{},"patch":[]}}'],
    ['poke with a string lmid', '{"type":"poke","baseCookie":1,"body":{"cookie":2,"lastMutationIDChanges":{"c":"1"},"patch":[]}}'],
    ['poke without patch', '{"type":"poke","baseCookie":1,"body":{"cookie":2,"lastMutationIDChanges":{}}}'],
    ['pushed without id', '{"type":"pushed"}'],
    ['pushed with an unknown refusal', '{"type":"pushed","id":"a","response":{"error":"Nope"}}'],
    ['pulled without body', '{"type":"pulled","id":"a"}'],
    ['error without retryable', '{"type":"error","code":"x","message":"y"}'],
  ])('rejects %s', (_, text) => {
    expect(() => parseServerFrame(text)).toThrow(FrameError);
  });
});
